"""The client's side of payments: one channel per provider, opened on first use with a deposit sized for a
number of tokens, reused across requests, topped up or replaced as needed; cumulative vouchers per step.

`PaymentSender.pay(payee, amount)` returns the voucher to send with the step. Chain work runs in worker
threads. The cumulative amounts live in memory: a client that restarts opens new channels (the old ones
are settled by their payees or reclaimed after expiry with `reclaim_expired`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import trio
from eth_utils import to_checksum_address

from node.ledger.channels import ChannelClient
from node.logging import get_logger
from protocol.voucher import Voucher, sign_voucher


def log():  # looked up at each use: a logger bound at import would miss configure_logging
    return get_logger("ledger.sender")


@dataclass
class OutgoingChannel:
    channel_id: int
    payee: str
    deposit: int
    expires_at: int
    paid: int = 0  # cumulative amount of the last voucher signed

    @property
    def remaining(self) -> int:
        return self.deposit - self.paid


class PaymentSender:
    """``deposit_for(payee)``: wei to lock when opening (e.g. price × layers × tokens_per_channel).
    ``lifetime``: seconds a channel stays valid; one with less than ``min_left`` seconds left is replaced."""

    def __init__(
        self,
        client: ChannelClient,
        private_key: bytes,
        *,
        deposit_for: Callable[[str], int],
        lifetime: int = 24 * 3600,
        min_left: int = 3600,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client, self._key = client, private_key
        self.deposit_for, self.lifetime, self.min_left, self._clock = deposit_for, lifetime, min_left, clock
        self.channels: dict[str, OutgoingChannel] = {}
        self.retired: list[OutgoingChannel] = []  # replaced channels: reclaim them after expiry
        self._lock = trio.Lock()  # one chain operation per payee decision at a time
        self.transactions = 0  # chain transactions sent (opens and top-ups), for the benchmark

    async def pay(self, payee: str, amount: int) -> Voucher:
        """A voucher raising what ``payee`` is paid by ``amount`` wei. Opens, tops up or replaces the
        channel first when needed. Raises `TransactionReverted`/`LedgerError` when the chain refuses."""
        payee = to_checksum_address(payee)
        async with self._lock:
            channel = await self._channel_with_room(payee, amount)
            channel.paid += amount
            return sign_voucher(
                self._key, self.client.ledger.chain_id, self.client.contract, channel.channel_id, channel.paid
            )

    async def _channel_with_room(self, payee: str, amount: int) -> OutgoingChannel:
        now = int(self._clock())
        channel = self.channels.get(payee)
        if channel is not None and channel.expires_at - now < self.min_left:
            self.retired.append(self.channels.pop(payee))  # too close to expiry for the payee to close safely
            channel = None
        if channel is None:
            deposit = max(self.deposit_for(payee), amount)
            # Expiry is judged by block time, which may run ahead of the wall clock on a devnet.
            chain_now = await trio.to_thread.run_sync(self.client.ledger.timestamp)
            expires = max(now, chain_now) + self.lifetime
            channel_id, _ = await trio.to_thread.run_sync(self.client.open, payee, deposit, expires)
            self.transactions += 1
            channel = self.channels[payee] = OutgoingChannel(channel_id, payee, deposit, expires)
            log().info("channel_opened", payee=payee, channel=channel_id, deposit=deposit)
        elif channel.remaining < amount:
            extra = max(self.deposit_for(payee), amount - channel.remaining)
            await trio.to_thread.run_sync(self.client.top_up, channel.channel_id, extra, channel.expires_at)
            self.transactions += 1
            channel.deposit += extra
            log().info("channel_topped_up", payee=payee, channel=channel.channel_id, added=extra)
        return channel

    async def reclaim_expired(self) -> int:
        """Reclaim retired channels past their expiry that their payee did not close; returns wei recovered."""
        now = int(self._clock())
        recovered = 0
        for channel in [c for c in self.retired if c.expires_at <= now]:
            state = await trio.to_thread.run_sync(self.client.channel, channel.channel_id)
            if state.open:
                await trio.to_thread.run_sync(self.client.reclaim, channel.channel_id)
                recovered += state.deposit
            self.retired.remove(channel)
        return recovered
