"""`steppe chain deploy | fund | balance | channels` on an embedded home and against a served chain."""

from __future__ import annotations

import json
from pathlib import Path

from eth_account import Account
from typer.testing import CliRunner

from node.cli import app
from node.ledger.channels import ChannelClient
from node.ledger.embedded import dev_key
from node.ledger.rpc import RpcLedger

runner = CliRunner()


def steppe(*args: str) -> str:
    result = runner.invoke(app, ["--log-level", "warning", "chain", *args])
    assert result.exit_code == 0, result.output
    return result.output


def test_an_operator_deploys_funds_and_inspects_an_embedded_chain(tmp_path: Path) -> None:
    home = str(tmp_path)
    contract = json.loads(steppe("deploy", "--home", home, "--json"))["contract"]
    someone = Account.create().address
    steppe("fund", someone, "12345", "--home", home)
    assert json.loads(steppe("balance", someone, "--home", home, "--json"))["wei"] == "12345"
    assert json.loads(steppe("channels", "--contract", contract, "--home", home, "--json")) == []


def test_the_commands_work_against_a_served_chain(served_url: str) -> None:
    contract = json.loads(steppe("deploy", "--rpc-url", served_url, "--json", "--dev-account", "9"))[
        "contract"
    ]
    ledger = RpcLedger(served_url)
    payer = ChannelClient(ledger, contract, dev_key(9))
    channel_id, _ = payer.open(Account.from_key(dev_key(8)).address, 777, ledger.timestamp() + 3600)
    (row,) = json.loads(steppe("channels", "--contract", contract, "--rpc-url", served_url, "--json"))
    assert (row["id"], row["payer"], row["deposit"], row["open"]) == (channel_id, payer.address, "777", True)
    result = runner.invoke(app, ["chain", "balance", "0x1234", "--rpc-url", served_url])
    assert result.exit_code != 0
