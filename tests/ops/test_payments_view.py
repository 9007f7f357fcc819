"""Payments as an operator sees them: `/metrics` and the status page fed by a real provider's `Payments`
on an embedded chain (the real contract on py-evm), after a client's voucher paid for a step."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import trio

from node.ledger.channels import ChannelClient, deploy
from node.ledger.connect import open_ledger
from node.ledger.embedded import dev_key
from node.metrics import NodeMetrics, payment_figures
from node.payments import PaymentSettings, StepBilling, start_payments
from node.status_page import status_extra
from protocol.identity import Identity
from protocol.voucher import sign_voucher

from .cdp import chromium_path, open_page
from .ops_driver import open_ops_node

parser = pytest.importorskip("prometheus_client.parser", reason="prometheus_client is the reference parser")


@pytest.fixture
async def paid_provider(tmp_path):
    """A provider's `Payments` after one 1-row step at 700 wei was paid by a voucher for 1000 wei."""
    home = tmp_path / "chain"
    ledger = await trio.to_thread.run_sync(lambda: open_ledger(home))
    contract, _ = await trio.to_thread.run_sync(deploy, ledger, dev_key(0))
    ledger.close()
    provider = Identity.from_int(41)
    pay = await start_payments(provider, PaymentSettings(rpc_url="", contract=contract, state_dir=home))
    payer = ChannelClient(pay.client.ledger, contract, dev_key(1))
    expires = pay.client.ledger.timestamp() + 24 * 3600
    channel, _ = await trio.to_thread.run_sync(payer.open, pay.client.address, 10**6, expires)
    voucher = sign_voucher(dev_key(1), pay.chain_id, contract, channel, 1000)
    await StepBilling(pay, price_per_row=700, credit_steps=1).charge(1, voucher.to_bytes())
    try:
        yield provider, pay, channel
    finally:
        pay.store.close()


async def test_metrics_count_what_a_voucher_paid_and_what_was_charged(paid_provider) -> None:
    _provider, pay, _channel = paid_provider
    assert payment_figures(pay) == {
        "earned_wei": 1000,
        "charged_wei": 700,
        "channels_open": 1,
        "refused": {},
        "transactions": 0,
    }
    async with open_ops_node(42) as node:
        text = NodeMetrics(node.node, payments=pay).render()
    fams = {s.name: s.value for f in parser.text_string_to_metric_families(text) for s in f.samples}
    assert fams["steppe_voucher_wei_total"] == 1000
    assert fams["steppe_charged_wei_total"] == 700
    assert fams["steppe_channels_open"] == 1
    assert "payments are off" not in text


@pytest.mark.skipif(
    chromium_path() is None, reason="no chromium on PATH (Debian: apt-get install -y chromium)"
)
async def test_the_page_shows_earnings_and_the_incoming_channel_without_console_errors(
    paid_provider, tmp_path
) -> None:
    provider, pay, channel = paid_provider
    extra = status_extra(SimpleNamespace(identity=provider, model=SimpleNamespace(payments=pay)))
    async with open_ops_node(43) as node:

        async def status(_query: dict[str, str], _body: bytes):
            return 200, {**node.node.status(), **extra}

        node.node.api.route("GET", "/status", status)
        async with open_page(node.url + "/", tmp_path / "chromium") as tab:
            with trio.fail_after(30):
                while await tab.evaluate("document.getElementById('earnings')?.textContent ?? '—'") == "—":
                    await trio.sleep(0.3)
            earnings = await tab.evaluate("document.getElementById('earnings').textContent")
            table = await tab.evaluate("document.getElementById('payments').textContent")
            await tab.screenshot(tmp_path / "status-page-payments.png")
            errors = list(tab.errors)
    assert errors == []
    assert earnings == "1,000"
    assert f"in #{channel}" in table and "1,000 of 1,000,000 wei" in table
    assert pay.client.address in table
