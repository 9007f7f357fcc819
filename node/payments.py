"""Paying for inference: the glue between `/steppe/infer/1` and the payment channels in `node.ledger`.

A provider (`ProviderPayments`) charges ``price × rows × layers`` wei for each step it serves and serves
only while the unpaid amount on the client's channel stays within its credit (``credit_steps`` steps); a
voucher that comes with a step is stored durably (`PaymentReceiver.accept`) *before* the step is served
and answered. A client (`PaymentSender`) sends with each step a cumulative voucher covering that step.
On shutdown a provider closes what is due (by default: every channel it holds a voucher for).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import trio

from node.ledger.abc import LedgerError
from node.ledger.channels import ChannelClient
from node.ledger.connect import open_ledger
from node.ledger.receiver import PaymentReceiver
from node.ledger.sender import PaymentSender
from node.ledger.store import VoucherStore
from node.logging import get_logger
from protocol.errors import ConfigError, MalformedMessage, SteppeError
from protocol.identity import Identity
from protocol.voucher import StaleVoucher, Voucher, VoucherRefused

log = get_logger("steppe.payments")


class PaymentRequired(SteppeError):
    """The client's unpaid amount would exceed the provider's credit, or its voucher was refused."""


@dataclass(frozen=True)
class PaymentSettings:
    rpc_url: str
    contract: str
    state_dir: Path
    chain_id: int = 0
    #: Unpaid steps a provider allows a client before refusing service.
    credit_steps: int = 1
    #: Wei a client locks when it opens a channel to a provider (topped up when spent).
    deposit_wei: int = 10**16
    #: Close every channel holding a voucher when the node stops (else only those near expiry).
    settle_on_exit: bool = True
    channel_lifetime_s: int = 24 * 3600
    close_margin_s: int = 600


@dataclass
class Payments:
    """A node's payment parts: it can be paid (receiver) and pay (sender) through one contract."""

    settings: PaymentSettings
    client: ChannelClient
    receiver: PaymentReceiver
    sender: PaymentSender
    store: VoucherStore
    earned_wei: int = 0
    refused: Counter[str] = field(default_factory=Counter)
    #: Per incoming channel: wei charged for steps served, and wei covered by vouchers, since start.
    charged: dict[int, int] = field(default_factory=dict)
    covered: dict[int, int] = field(default_factory=dict)
    last_paid: dict[int, int] = field(default_factory=dict)
    #: Per incoming channel: held while a voucher is accepted and counted (see `StepBilling._accept`).
    accepting: dict[int, trio.Lock] = field(default_factory=dict)

    @property
    def chain_id(self) -> int:
        return self.client.ledger.chain_id

    @property
    def contract(self) -> str:
        return self.client.contract

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """The receiver's watcher; on cancellation settles what is due (all, with ``settle_on_exit``)."""
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.receiver.run)
                task_status.started()
        finally:
            if self.settings.settle_on_exit:
                with trio.CancelScope(shield=True), trio.move_on_after(60):
                    closed = await self.receiver.settle_all()
                    log.info("channels_settled_on_exit", closed=closed)
            await trio.to_thread.run_sync(self.store.close)

    def status(self) -> dict:
        channels = self.store.open_channels()
        return {
            "chain_id": self.chain_id,
            "contract": self.contract,
            "address": self.client.address,
            "earned_wei": self.earned_wei,
            "open_channels_in": [
                {"channel": c.channel_id, "payer": c.payer, "deposit": c.deposit, "paid": c.paid}
                for c in channels
            ],
            "channels_out": [
                {"channel": c.channel_id, "payee": c.payee, "deposit": c.deposit, "paid": c.paid}
                for c in self.sender.channels.values()
            ],
            "refused": dict(self.refused),
            "transactions_sent": self.sender.transactions,
        }


async def start_payments(identity: Identity, settings: PaymentSettings) -> Payments:
    """Connect to the chain and the contract. Raises `ConfigError` (no contract) or `LedgerError`."""
    if not settings.contract:
        raise ConfigError("payments need chain.contract: deploy one with `steppe chain deploy`")
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    ledger = await trio.to_thread.run_sync(
        lambda: open_ledger(settings.state_dir, settings.rpc_url, chain_id=settings.chain_id)
    )
    client = ChannelClient(ledger, settings.contract, identity.evm_key)
    store = await trio.to_thread.run_sync(VoucherStore, settings.state_dir / "vouchers.sqlite")
    receiver = PaymentReceiver(client, store, margin=settings.close_margin_s)
    sender = PaymentSender(
        client,
        identity.evm_key,
        deposit_for=lambda _payee: settings.deposit_wei,
        lifetime=settings.channel_lifetime_s,
        min_left=2 * settings.close_margin_s,
    )
    log.info("payments_ready", chain_id=ledger.chain_id, contract=client.contract, address=client.address)
    return Payments(settings, client, receiver, sender, store)


class StepBilling:
    """Per-session billing on the provider: charges each step, takes its voucher, enforces the credit.

    What a client owes is kept per channel (``Payments.charged`` against ``Payments.covered``), so vouchers
    of concurrent sessions on one channel may arrive in any order: a stale one adds nothing, the newer
    one already covered both. Before its first voucher a session is billed on its own.
    """

    def __init__(self, payments: Payments, price_per_row: int, credit_steps: int) -> None:
        self.payments, self.price_per_row, self.credit_steps = payments, price_per_row, credit_steps
        self.channel: int | None = None
        self.unbound = 0  # charged before the session named its channel

    async def charge(self, rows: int, voucher_bytes: bytes) -> int:
        """Bill a step of ``rows`` rows; returns its cost. Raises `PaymentRequired` (nothing is charged)."""
        pay = self.payments
        cost = rows * self.price_per_row
        if voucher_bytes:
            try:
                voucher = Voucher.from_bytes_untrusted(voucher_bytes)
            except MalformedMessage as exc:
                pay.refused["malformed"] += 1
                raise PaymentRequired(f"bad voucher: {exc}") from exc
            if self.channel is not None and voucher.channel_id != self.channel:
                pay.refused["channel"] += 1
                raise PaymentRequired("a session must pay through one channel")
            await self._accept(voucher)
        ch = self.channel
        charged = pay.charged.get(ch, 0) if ch is not None else 0
        covered = pay.covered.get(ch, 0) if ch is not None else 0
        if charged + self.unbound + cost - covered > self.credit_steps * cost:
            pay.refused["unpaid"] += 1
            raise PaymentRequired(
                f"unpaid {charged + self.unbound + cost - covered} wei would exceed the credit of "
                f"{self.credit_steps} step(s); send a voucher with each step"
            )
        if ch is None:
            self.unbound += cost
        else:
            pay.charged[ch] = charged + cost
        return cost

    async def _accept(self, voucher: Voucher) -> None:
        pay = self.payments
        if self.channel is None:
            self.channel = voucher.channel_id
            pay.charged[voucher.channel_id] = pay.charged.get(voucher.channel_id, 0) + self.unbound
            self.unbound = 0
        # Sessions of one client share a channel and send their vouchers concurrently. Accepting and counting
        # a voucher is one step per channel: else a voucher found stale (a newer one is stored) could be
        # followed by the credit check before the newer one was counted, refusing a paid step, and two
        # acceptances counted against the same earlier amount would count the same wei twice.
        lock = pay.accepting.setdefault(voucher.channel_id, trio.Lock())
        async with lock:
            paid_before = pay.last_paid.get(voucher.channel_id)
            if paid_before is None:  # first sight since start: the store may hold a voucher from before
                before = await trio.to_thread.run_sync(pay.store.get, VoucherStore.key(voucher))
                paid_before = before.paid if before is not None else 0
            try:
                state = await pay.receiver.accept(voucher)
            except StaleVoucher:
                return
            except (VoucherRefused, MalformedMessage, LedgerError) as exc:
                pay.refused[type(exc).__name__] += 1
                raise PaymentRequired(f"voucher refused: {exc}") from exc
            gained = state.paid - paid_before
            if gained <= 0:
                return
            pay.last_paid[voucher.channel_id] = state.paid
            pay.covered[voucher.channel_id] = pay.covered.get(voucher.channel_id, 0) + gained
            pay.earned_wei += gained
