"""The provider's side of payments as a trio service: accept vouchers durably, close channels before they
expire, and on shutdown close what is due.

The inference server calls `PaymentReceiver.accept` with each voucher a client sends and acknowledges (and
serves) only after it returns: by then the voucher is on disk. Chain and disk work runs in worker threads.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import trio

from node.ledger.abc import LedgerError, TransactionReverted
from node.ledger.channels import ChannelClient
from node.ledger.store import VoucherStore
from node.logging import get_logger
from protocol.voucher import (
    ChannelExpired,
    ChannelNotOpen,
    ChannelState,
    Voucher,
    VoucherOverDeposit,
    WrongChannelDomain,
)

ZERO_ADDRESS = "0x0000000000000000000000000000000000000000"


def log():  # looked up at each use: a logger bound at import would miss configure_logging
    return get_logger("ledger.receiver")


class PaymentReceiver:
    """``margin``: stop accepting and close this many seconds before a channel's expiry."""

    def __init__(
        self,
        client: ChannelClient,
        store: VoucherStore,
        *,
        margin: int = 600,
        check_every: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client, self.store = client, store
        self.margin, self.check_every, self._clock = margin, check_every, clock
        self._chain_limiter = trio.CapacityLimiter(1)
        self._chain_time = 0

    def _now(self) -> int:
        # The contract judges expiry by block time, which can run ahead of the wall clock (a devnet mines a
        # block at least one second after its parent): go by whichever is later.
        return max(int(self._clock()), self._chain_time)

    async def _observe_chain_time(self) -> None:
        self._chain_time = await trio.to_thread.run_sync(
            self.client.ledger.timestamp, limiter=self._chain_limiter
        )

    async def _refresh(self, voucher: Voucher) -> ChannelState:
        """Read the channel from the chain (first sight, or after a possible top-up) and record it."""
        state = await trio.to_thread.run_sync(
            self.client.state, voucher.channel_id, limiter=self._chain_limiter
        )
        if state.payer == ZERO_ADDRESS:
            raise ChannelNotOpen(f"channel {voucher.channel_id} does not exist")
        if state.payee != self.client.address:
            raise WrongChannelDomain(f"channel {voucher.channel_id} pays {state.payee}, not this provider")
        return await trio.to_thread.run_sync(self.store.track, state)

    async def accept(self, voucher: Voucher) -> ChannelState:
        """Verify and durably store ``voucher``; returns the channel with it as the best voucher.

        Raises the refusals of `protocol.voucher.accept_voucher` (`StaleVoucher`, `VoucherOverDeposit`,
        `ChannelNotOpen`, `ChannelExpired`, `WrongChannelDomain`, `InvalidSignature`/`WrongVoucherSigner`);
        nothing is stored then. Cancellation before the disk commit leaves nothing stored.
        """
        if voucher.chain_id != self.client.ledger.chain_id or voucher.contract != self.client.contract:
            raise WrongChannelDomain("voucher is for another chain or contract")
        try:
            # One trip to a worker thread in the usual case: a channel we already track.
            state = await trio.to_thread.run_sync(self._accept_if_known, voucher)
        except (VoucherOverDeposit, ChannelExpired):
            await self._refresh(voucher)  # the payer may have topped up or extended the channel since
            return await trio.to_thread.run_sync(self._accept_now, voucher)
        if state is None:  # first voucher on this channel: read it from the chain first
            await self._refresh(voucher)
            state = await trio.to_thread.run_sync(self._accept_now, voucher)
        return state

    def _accept_if_known(self, voucher: Voucher) -> ChannelState | None:
        if self.store.get(VoucherStore.key(voucher)) is None:
            return None
        return self._accept_now(voucher)

    def _accept_now(self, voucher: Voucher) -> ChannelState:
        return self.store.accept(voucher, now=self._now(), margin=self.margin)

    async def settle(self, states: list[ChannelState]) -> int:
        """Close each channel with its best voucher; returns how many closed. Failures are logged, not raised."""
        closed = 0
        for state in states:
            # Shielded: a close that went through must also be recorded, or we would try it again.
            with trio.CancelScope(shield=True):
                closed += await self._settle_one(state)
        return closed

    async def _settle_one(self, state: ChannelState) -> int:
        assert state.best is not None
        key = VoucherStore.key(state)
        try:
            receipt = await trio.to_thread.run_sync(
                self.client.close, state.best, limiter=self._chain_limiter
            )
        except TransactionReverted as exc:
            log().warning("channel_close_refused", channel=state.channel_id, error=exc.error)
            if exc.error in ("ChannelNotOpen", "ChannelExpired"):
                await trio.to_thread.run_sync(self.store.mark_closed, key, b"")
            return 0
        except LedgerError as exc:
            log().warning("channel_close_failed", channel=state.channel_id, error=str(exc))
            return 0
        await trio.to_thread.run_sync(self.store.mark_closed, key, receipt.tx_hash)
        log().info("channel_settled", channel=state.channel_id, amount=state.paid, gas=receipt.gas_used)
        return 1

    async def settle_due(self) -> int:
        await self._observe_chain_time()
        due = await trio.to_thread.run_sync(lambda: self.store.due(now=self._now(), margin=self.margin))
        return await self.settle(due)

    async def settle_all(self) -> int:
        """Close every open channel holding a voucher (cash out), whatever its expiry."""
        states = await trio.to_thread.run_sync(self.store.open_channels)
        return await self.settle([s for s in states if s.best is not None])

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Watch for channels near expiry and close them; on cancellation, close what is due (up to 60 s)."""
        task_status.started()
        try:
            while True:
                await self.settle_due()
                await trio.sleep(self.check_every)
        finally:
            with trio.move_on_after(60) as scope:
                scope.shield = True
                await self.settle_due()
