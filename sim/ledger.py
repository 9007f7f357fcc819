"""Payments in the simulator: one in-process chain shared by every node, called deterministically.

Nodes reach the chain through `node.payments.start_payments`, which opens a ledger per node; inside
`sim_patches` it gets the one shared `EmbeddedLedger` (the real contract on py-evm, in memory) instead.
The node code calls the ledger and its voucher store through ``trio.to_thread.run_sync``; under the mock
clock's autojump, a thread's wall-clock duration would let virtual time jump by a scheduling accident.
`sim_patches` therefore runs those calls inline on the trio thread: the chain costs wall time but no
virtual time, and a run stays a pure function of its seed. Conservation is audited from the chain's own
events after every provider has settled (`SimChain.audit`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from node.ledger.channels import ChannelClient, deploy
from node.ledger.embedded import EmbeddedChain, dev_key
from node.ledger.embedded_ledger import EmbeddedLedger
from node.payments import PaymentSettings

from .scenario import PaymentsSpec

if TYPE_CHECKING:
    from .runner import SimNode, Simulation

#: Wei each paying gateway starts with.
FUND_WEI = 10**20


class SimChain:
    """The contract deployed on an in-memory embedded chain; funds the gateways."""

    def __init__(self, root: Path, spec: PaymentsSpec) -> None:
        self.root, self.spec = root, spec
        self.ledger = EmbeddedLedger(EmbeddedChain(None))
        self.contract, _ = deploy(self.ledger, dev_key(0))
        self.funded: dict[str, int] = {}

    def fund(self, nodes: list[SimNode]) -> None:
        for sn in nodes:
            address = sn.identity.evm_address
            self.ledger.transact(dev_key(0), address, value=FUND_WEI, gas=21_000)
            self.funded[address] = FUND_WEI

    def settings_for(self, sn: SimNode) -> PaymentSettings:
        return PaymentSettings(
            rpc_url="",
            contract=self.contract,
            state_dir=self.root / f"node{sn.index}",
            chain_id=self.ledger.chain_id,
            credit_steps=self.spec.credit_steps,
            deposit_wei=self.spec.deposit_wei,
        )

    def audit(self, sim: Simulation) -> dict:
        """Conservation from the chain's events, against what providers counted off-chain."""
        events = ChannelClient(self.ledger, self.contract, dev_key(0)).events()
        opened = {e.args["channelId"]: e.args for e in events if e.name == "ChannelOpened"}
        deposits = {cid: a["deposit"] for cid, a in opened.items()}
        for e in events:
            if e.name == "ChannelToppedUp":
                deposits[e.args["channelId"]] += e.args["added"]
        closed = {e.args["channelId"]: e.args for e in events if e.name == "ChannelClosed"}
        per_channel_ok = all(a["paid"] + a["refunded"] == deposits[cid] for cid, a in closed.items())
        locked = sum(d for cid, d in deposits.items() if cid not in closed)
        balance = self.ledger.balance(self.contract)
        paid_to: dict[str, int] = {}
        for cid, a in closed.items():
            payee = opened[cid]["payee"]
            paid_to[payee] = paid_to.get(payee, 0) + a["paid"]
        earned = {}
        for sn in sim.nodes:
            if sn.role == "provider" and sn.earned_wei:
                earned[sn.identity.evm_address] = earned.get(sn.identity.evm_address, 0) + sn.earned_wei
        by_payer = {cid: a["payer"] for cid, a in opened.items()}
        riders = {sn.identity.evm_address for sn in sim.nodes if sn.free_rider}
        unpaid_riders = [
            sn.charged.get(cid, 0) - sn.covered.get(cid, 0)
            for sn in sim.nodes
            for cid in sn.charged
            if by_payer.get(cid) in riders
        ]
        w, p = sim.sc.workload, self.spec
        layers = max((b - a for a, b in sim.spans), default=0)
        credit_bound = p.credit_steps * p.price_wei_per_token_layer * layers * w.prompt_tokens
        client_paid = sum(g.paid_wei for g in sim.c.generations)
        return {
            "channels_opened": len(opened),
            "channels_closed": len(closed),
            "deposits_wei": sum(deposits.values()),
            "paid_on_chain_wei": sum(paid_to.values()),
            "earned_off_chain_wei": sum(earned.values()),
            "client_vouchers_completed_generations_wei": client_paid,
            "per_channel_conserved": per_channel_ok,
            "contract_balance_wei": balance,
            "contract_holds_exactly_unclosed_deposits": balance == locked,
            "payees_paid_what_they_earned": paid_to == earned,
            "conserved": per_channel_ok and balance == locked and paid_to == earned,
            "free_rider_channels": len(unpaid_riders),
            "free_rider_max_unpaid_wei": max(unpaid_riders, default=0),
            "free_rider_credit_bound_wei": credit_bound,
            "free_riders_cut_off_within_credit": all(u <= credit_bound for u in unpaid_riders),
        }


async def _run_inline(fn: Any, *args: Any, **_kwargs: Any) -> Any:
    """``trio.to_thread.run_sync`` without the thread: same result, no virtual time passes."""
    await trio.lowlevel.checkpoint()
    return fn(*args)


async def _guarded_teardown(self: Any, peer_id: Any) -> None:
    # py-libp2p 0.8.1 deletes the peer's entry after an await, so two teardowns of one peer raise
    # KeyError and take the node's pubsub service down; pop tolerates the second one.
    stream = self.peers.get(peer_id)
    if stream is not None:
        with contextlib.suppress(Exception):
            await stream.reset()
        self.peers.pop(peer_id, None)
    self._forget_all_subscriptions(peer_id)


@contextlib.contextmanager
def sim_patches(chain: SimChain | None) -> Iterator[None]:
    """Shared ledger, inline "threads", and the pubsub teardown guard; all undone on exit."""
    from libp2p.pubsub.pubsub import Pubsub

    import node.payments as payments

    saved = [
        (trio.to_thread, "run_sync", trio.to_thread.run_sync),
        (Pubsub, "_teardown_if_connected", Pubsub._teardown_if_connected),
        (payments, "open_ledger", payments.open_ledger),
    ]
    try:
        trio.to_thread.run_sync = _run_inline  # type: ignore[assignment]
        Pubsub._teardown_if_connected = _guarded_teardown  # type: ignore[method-assign]
        if chain is not None:
            payments.open_ledger = lambda *_a, **_k: chain.ledger  # type: ignore[assignment]
        yield
    finally:
        for owner, name, value in saved:
            setattr(owner, name, value)
