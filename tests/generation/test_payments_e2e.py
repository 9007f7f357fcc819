"""Paid generation on a devnet sharing one chain (`steppe chain serve`): vouchers per step inside the
sealed steps, settlement when the providers stop, value conserved to the wei, free-riders cut off."""

from __future__ import annotations

import httpx
import pytest

from node.devnet import Devnet
from node.ledger.channels import ChannelClient
from node.ledger.embedded import dev_key

pytestmark = pytest.mark.slow
PROMPT = "the steppe is wide and the wind"
PRICE = 1_000_000_007  # wei per token per layer: odd, so that sums cannot match by accident


def test_each_provider_is_paid_price_times_tokens_times_layers_and_value_is_conserved(
    tiny_model, oracle, tmp_path
) -> None:
    _, want = oracle(PROMPT, 12)
    net = Devnet(model=tiny_model, nodes=3, root=tmp_path / "net", price=PRICE)
    net.start()
    try:
        reply = httpx.post(
            net.api_url + "/v1/completions",
            json={"model": "tiny-gen", "prompt": PROMPT, "max_tokens": 12, "temperature": 0},
            timeout=120,
        ).json()
        assert reply["choices"][0]["text"] == want
        served = {}
        for node in net.members:
            st = net.status(node)["model"]
            layers = node.layers[1] - node.layers[0]
            served[net.address(node)] = PRICE * layers * st["serving"]["tokens_served"]
            assert st["payments"]["earned_wei"] == served[net.address(node)] > 0
        assert reply["steppe"]["paid_wei"] == sum(served.values())
        payer = net.address(net.gateway)
    finally:
        net.stop()  # graceful: every provider closes its channels with its best voucher
    try:
        ledger = net.chain.ledger()
        client = ChannelClient(ledger, net.chain.contract, dev_key(0))
        events = client.events()
        opened = {e.args["channelId"]: e.args for e in events if e.name == "ChannelOpened"}
        closed = {e.args["channelId"]: e.args for e in events if e.name == "ChannelClosed"}
        assert set(closed) == set(opened), "every channel was settled on shutdown"
        paid_to: dict[str, int] = {}
        for cid, ev in closed.items():
            assert opened[cid]["payer"] == payer
            # Conservation per channel: what the payee got plus the refund is exactly the deposit.
            deposit = opened[cid]["deposit"] + sum(
                e.args["added"] for e in events if e.name == "ChannelToppedUp" and e.args["channelId"] == cid
            )
            assert ev["paid"] + ev["refunded"] == deposit
            paid_to[opened[cid]["payee"]] = paid_to.get(opened[cid]["payee"], 0) + ev["paid"]
        assert paid_to == served
        assert ledger.balance(net.chain.contract) == 0, (
            "the contract keeps nothing once every channel is closed"
        )
    finally:
        net.stop_chain()


def test_a_client_that_stops_paying_is_cut_off_within_its_credit(tiny_model, tmp_path) -> None:
    extra = {"gateway": ["--stop-paying-after", "2"]}
    with Devnet(model=tiny_model, nodes=3, root=tmp_path / "net", price=PRICE, extra_args=extra) as net:
        reply = httpx.post(
            net.api_url + "/v1/completions",
            json={"model": "tiny-gen", "prompt": PROMPT, "max_tokens": 12, "temperature": 0},
            timeout=120,
        )
        assert reply.status_code in (502, 503), reply.text
        refusals = 0
        for node in net.members:
            st = net.status(node)["model"]
            layers = node.layers[1] - node.layers[0]
            serving = st["serving"]
            refusals += serving["refused"].get("payment", 0)
            # Two paid steps plus at most one step on credit, never more: the third step is served
            # unpaid, the fourth is refused at the first hop and the client gets no further.
            assert serving["steps"] <= 3
            unpaid = PRICE * layers * serving["tokens_served"] - st["payments"]["earned_wei"]
            assert 0 <= unpaid <= PRICE * layers * 1  # at most one decode step (one row) on credit
        assert refusals >= 1


def test_a_provider_killed_mid_generation_settles_exactly_the_last_voucher_it_stored(
    tiny_model, oracle, tmp_path
) -> None:
    from node.ledger.store import VoucherStore

    n = 30
    _, want = oracle(PROMPT, n)
    split = [(0, 2), (2, 4), (2, 4), (4, 6)]
    net = Devnet(model=tiny_model, root=tmp_path / "net", layer_split=split, price=PRICE)
    net.start()
    try:
        pair = net.members[1:3]
        body = {"model": "tiny-gen", "prompt": PROMPT, "max_tokens": n, "temperature": 0}
        killed = None
        for text, stats in net.stream_completion(body):  # noqa: B007 - the last values are checked below
            if killed is None and len(text) > 3:
                killed = next(m for m in pair if net.status(m)["model"]["serving"]["sessions_active"] > 0)
                net.kill(killed)
        assert text == want and stats["failovers"] == 1
        # What the killed provider had persisted (it acknowledged nothing it had not stored first).
        store = VoucherStore(killed.home / "payments" / "vouchers.sqlite")
        stored = {s.channel_id: s.paid for s in store.open_channels()}
        store.close()
        assert len(stored) == 1 and next(iter(stored.values())) > 0
        paid_by_client = sum(h["paid_wei"] for h in stats["hops"] if h["peer_id"] == killed.peer_id)
        step = PRICE * 2  # one decode row through its two layers
        assert paid_by_client - step <= next(iter(stored.values())) <= paid_by_client
        # Restart it: it comes back with its store and, when it stops, settles that voucher exactly.
        net.spawn(killed, bootstrap=net.members[0].addr)
        net.wait_serving(killed)
    finally:
        net.stop()
    try:
        client = ChannelClient(net.chain.ledger(), net.chain.contract, dev_key(0))
        closed = {e.args["channelId"]: e.args["paid"] for e in client.events() if e.name == "ChannelClosed"}
        for channel, amount in stored.items():
            assert closed[channel] == amount
    finally:
        net.stop_chain()
