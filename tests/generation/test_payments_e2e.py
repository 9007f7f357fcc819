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
