"""A payer whose code refuses ether cannot block the payee's close: its refund waits in `owed`."""

from __future__ import annotations

from eth_abi import encode

from node.ledger.abc import Ledger
from node.ledger.artifact import load_artifact
from node.ledger.channels import ChannelClient
from node.ledger.embedded import dev_key

ETHER = 10**18


def test_a_refund_that_bounces_is_owed_and_withdrawn_later(ledger: Ledger, contract: str) -> None:
    helper = load_artifact("RefusingPayer")
    owner, payee = dev_key(1), ChannelClient(ledger, contract, dev_key(2))
    refusing = ledger.transact(owner, None, helper.bytecode).contract_address
    assert refusing is not None

    def helper_call(function: str, *args: object, value: int = 0) -> object:
        selector, inputs, _ = helper.functions[function]
        return ledger.transact(owner, refusing, selector + encode(inputs, list(args)), value=value)

    channels = ChannelClient(ledger, contract, owner)  # only for encoding calls to the channel contract
    open_call = channels.calldata("open", payee.address, ledger.timestamp() + 3600)
    receipt = helper_call("forward", contract, open_call, value=ETHER)
    channel_id = channels.decode_logs(receipt.logs)[0].args["channelId"]
    assert payee.channel(channel_id).payer == refusing

    # A contract payer cannot sign vouchers, so exercise the refund through reclaim: close refunds through
    # the same private `_pay`.
    ledger.increase_time(3601)
    reclaim_call = channels.calldata("reclaim", channel_id)
    receipt = helper_call("forward", contract, reclaim_call)
    names = [e.name for e in channels.decode_logs(receipt.logs)]
    assert names == ["ChannelReclaimed", "PaymentDeferred"]
    assert payee.owed(refusing) == ETHER
    assert ledger.balance(refusing) == 0

    helper_call("setAccepting", True)
    receipt = helper_call("forward", contract, channels.calldata("withdrawOwed"))
    assert [e.name for e in channels.decode_logs(receipt.logs)] == ["OwedWithdrawn"]
    assert payee.owed(refusing) == 0
    assert ledger.balance(refusing) == ETHER
