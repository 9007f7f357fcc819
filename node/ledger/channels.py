"""Drive the PaymentChannels contract through any `Ledger`: deploy, open, top up, close, reclaim, withdraw.

Every method blocks until its transaction is mined and raises `TransactionReverted` (with the contract's
error name in ``.error``, e.g. ``"ChannelExpired"``) when the contract refuses; nothing is sent then.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from eth_abi import decode, encode
from eth_account import Account
from eth_utils import to_checksum_address

from node.ledger.abc import Ledger, LedgerError, Receipt
from node.ledger.artifact import Artifact, load_artifact
from protocol.voucher import ChannelState, Voucher


@dataclass(frozen=True, slots=True)
class OnChainChannel:
    channel_id: int
    payer: str
    payee: str
    deposit: int
    expires_at: int
    open: bool


@dataclass(frozen=True, slots=True)
class ChannelEvent:
    name: (
        str  # ChannelOpened, ChannelToppedUp, ChannelClosed, ChannelReclaimed, PaymentDeferred, OwedWithdrawn
    )
    args: dict[str, Any]
    block_number: int
    tx_hash: bytes


def deploy(ledger: Ledger, private_key: bytes) -> tuple[str, Receipt]:
    """Deploy the committed contract build; returns its address and the receipt."""
    receipt = ledger.transact(private_key, None, load_artifact().bytecode)
    if receipt.contract_address is None:
        raise LedgerError("deployment receipt has no contract address")
    return receipt.contract_address, receipt


class ChannelClient:
    """One account's view of one PaymentChannels contract. Thread-safe when the ledger is."""

    def __init__(self, ledger: Ledger, contract: str, private_key: bytes) -> None:
        self.ledger = ledger
        self.contract = to_checksum_address(contract)
        self._key = private_key
        self.address = Account.from_key(private_key).address
        self._artifact: Artifact = load_artifact()

    # -- encoding ---------------------------------------------------------------------------------------

    def calldata(self, function: str, *args: Any) -> bytes:
        """ABI-encoded call of the contract's ``function`` (for batching or calling through another contract)."""
        selector, inputs, _ = self._artifact.functions[function]
        return selector + encode(inputs, list(args))

    def _read(self, function: str, *args: Any) -> tuple[Any, ...]:
        _, _, outputs = self._artifact.functions[function]
        return tuple(decode(outputs, self.ledger.call(self.contract, self.calldata(function, *args))))

    def _send(self, function: str, *args: Any, value: int = 0) -> Receipt:
        return self.ledger.transact(self._key, self.contract, self.calldata(function, *args), value=value)

    # -- transactions -----------------------------------------------------------------------------------

    def open(self, payee: str, deposit: int, expires_at: int) -> tuple[int, Receipt]:
        """Open a channel to ``payee``; returns the new channel id (read from the ChannelOpened event)."""
        receipt = self._send("open", to_checksum_address(payee), expires_at, value=deposit)
        for event in self.decode_logs(receipt.logs):
            if event.name == "ChannelOpened":
                return event.args["channelId"], receipt
        raise LedgerError("open succeeded without a ChannelOpened event")

    def top_up(self, channel_id: int, amount: int, expires_at: int) -> Receipt:
        return self._send("topUp", channel_id, expires_at, value=amount)

    def close(self, voucher: Voucher) -> Receipt:
        """As the payee, settle with ``voucher`` (must be for this chain and contract)."""
        if voucher.contract != self.contract or voucher.chain_id != self.ledger.chain_id:
            raise LedgerError("voucher is for another chain or contract")
        v, r, s = voucher.vrs
        return self._send("close", voucher.channel_id, voucher.amount, v, r, s)

    def reclaim(self, channel_id: int) -> Receipt:
        return self._send("reclaim", channel_id)

    def withdraw_owed(self) -> Receipt:
        return self._send("withdrawOwed")

    # -- reads ------------------------------------------------------------------------------------------

    def channel(self, channel_id: int) -> OnChainChannel:
        payer, expires_at, payee, is_open, deposit = self._read("channels", channel_id)
        return OnChainChannel(
            channel_id, to_checksum_address(payer), to_checksum_address(payee), deposit, expires_at, is_open
        )

    def state(self, channel_id: int) -> ChannelState:
        """The provider-side starting state of a channel, read from the chain."""
        c = self.channel(channel_id)
        return ChannelState(
            chain_id=self.ledger.chain_id,
            contract=self.contract,
            channel_id=channel_id,
            payer=c.payer,
            payee=c.payee,
            deposit=c.deposit,
            expires_at=c.expires_at,
            open=c.open,
        )

    def owed(self, address: str) -> int:
        return self._read("owed", to_checksum_address(address))[0]

    def next_channel_id(self) -> int:
        return self._read("nextChannelId")[0]

    def voucher_signer(self, channel_id: int, amount: int, signature: bytes) -> str:
        """What the contract's ``ecrecover`` path (used by ``close``) says signed this; zero address if invalid."""
        v = signature[64] if len(signature) == 65 else 0
        return to_checksum_address(
            self._read(
                "voucherSigner",
                channel_id,
                amount,
                v,
                signature[:32].rjust(32, b"\0"),
                signature[32:64].rjust(32, b"\0"),
            )[0]
        )

    def voucher_digest(self, channel_id: int, amount: int) -> bytes:
        return self._read("voucherDigest", channel_id, amount)[0]

    # -- events -----------------------------------------------------------------------------------------

    def decode_logs(self, logs: Any) -> list[ChannelEvent]:
        events = []
        for entry in logs:
            if entry.address != self.contract or not entry.topics:
                continue
            abi = self._artifact.events.get(entry.topics[0])
            if abi is None:
                continue
            indexed = [i for i in abi["inputs"] if i["indexed"]]
            plain = [i for i in abi["inputs"] if not i["indexed"]]
            args = {
                i["name"]: decode([i["type"]], topic)[0]
                for i, topic in zip(indexed, entry.topics[1:], strict=True)
            }
            args.update(
                zip([i["name"] for i in plain], decode([i["type"] for i in plain], entry.data), strict=True)
            )
            for i in abi["inputs"]:
                if i["type"] == "address":
                    args[i["name"]] = to_checksum_address(args[i["name"]])
            events.append(ChannelEvent(abi["name"], args, entry.block_number, entry.tx_hash))
        return events

    def events(self, from_block: int = 0) -> list[ChannelEvent]:
        return self.decode_logs(self.ledger.logs(self.contract, from_block=from_block))
