"""Payment-channel vouchers: EIP-712 hashing, signing, verification and the provider's acceptance rule.

A voucher is the payer's signature over ``(chainId, contract, channelId, cumulativeAmount)``: the first two
are the EIP-712 domain, the last two the ``Voucher`` struct. The hashing is byte-for-byte what
``PaymentChannels.voucherDigest`` computes, and a signature is accepted here exactly when the contract's
``voucherSigner`` returns the payer (low s, v in {27, 28}); a differential test holds the two together.

Pure: no I/O. `accept_voucher` is the whole provider-side rule; storing the result durably is the node's job.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

from eth_hash.auto import keccak
from eth_utils import is_hex_address, to_canonical_address, to_checksum_address

from .errors import InvalidSignature, MalformedMessage, SteppeError
from .evm import recover_address, sign_hash

DOMAIN_NAME = "SteppePaymentChannels"
DOMAIN_VERSION = "1"
DOMAIN_TYPEHASH = keccak(
    b"EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
)
VOUCHER_TYPEHASH = keccak(b"Voucher(uint256 channelId,uint256 cumulativeAmount)")
_NAME_HASH = keccak(DOMAIN_NAME.encode())
_VERSION_HASH = keccak(DOMAIN_VERSION.encode())
_UINT256_MAX = 2**256 - 1

# Wire layout: chain id (8) | contract (20) | channel id (32) | amount (32) | signature (65).
VOUCHER_WIRE_SIZE = 8 + 20 + 32 + 32 + 65


class VoucherRefused(SteppeError):
    """A well-formed voucher that the provider must not accept. Subclasses say why; nothing was stored."""


class StaleVoucher(VoucherRefused):
    """The voucher's cumulative amount is not above the last one accepted on this channel."""


class VoucherOverDeposit(VoucherRefused):
    """The voucher asks for more than the channel's deposit: the contract would refuse to pay it."""


class ChannelNotOpen(VoucherRefused):
    """The channel is unknown, already closed or reclaimed."""


class ChannelExpired(VoucherRefused):
    """The channel is past (or too close to) its expiry: the payee could no longer close with it."""


class WrongChannelDomain(VoucherRefused):
    """The voucher is for another chain, another contract or another channel."""


class WrongVoucherSigner(InvalidSignature):
    """The signature is valid but was made by someone other than the channel's payer."""


@functools.lru_cache(maxsize=1024)
def _checksum(address: str) -> str:
    return to_checksum_address(address)


@functools.lru_cache(maxsize=1024)
def _same_address(a: str, b: str) -> bool:
    return is_hex_address(a) and is_hex_address(b) and to_canonical_address(a) == to_canonical_address(b)


def _word(value: int) -> bytes:
    return value.to_bytes(32, "big")


def _address_word(address: str) -> bytes:
    return b"\x00" * 12 + to_canonical_address(address)


@functools.lru_cache(maxsize=1024)  # a node talks to a handful of (chain, contract) pairs
def domain_separator(chain_id: int, contract: str) -> bytes:
    return keccak(DOMAIN_TYPEHASH + _NAME_HASH + _VERSION_HASH + _word(chain_id) + _address_word(contract))


def voucher_digest(chain_id: int, contract: str, channel_id: int, amount: int) -> bytes:
    """The 32-byte EIP-712 digest the payer signs (equal to the contract's ``voucherDigest``)."""
    struct_hash = keccak(VOUCHER_TYPEHASH + _word(channel_id) + _word(amount))
    return keccak(b"\x19\x01" + domain_separator(chain_id, contract) + struct_hash)


def typed_data(chain_id: int, contract: str, channel_id: int, amount: int) -> dict:
    """The voucher as EIP-712 typed data (the JSON of ``eth_signTypedData_v4``), for wallets and for outside
    implementations of EIP-712 to check `voucher_digest` against."""
    return {
        "types": {
            "EIP712Domain": [
                {"name": "name", "type": "string"},
                {"name": "version", "type": "string"},
                {"name": "chainId", "type": "uint256"},
                {"name": "verifyingContract", "type": "address"},
            ],
            "Voucher": [
                {"name": "channelId", "type": "uint256"},
                {"name": "cumulativeAmount", "type": "uint256"},
            ],
        },
        "primaryType": "Voucher",
        "domain": {
            "name": DOMAIN_NAME,
            "version": DOMAIN_VERSION,
            "chainId": chain_id,
            "verifyingContract": contract,
        },
        "message": {"channelId": channel_id, "cumulativeAmount": amount},
    }


@dataclass(frozen=True, slots=True)
class Voucher:
    chain_id: int
    contract: str  # checksummed address
    channel_id: int
    amount: int  # cumulative wei
    signature: bytes  # r || s || v, 65 bytes

    @property
    def digest(self) -> bytes:
        return voucher_digest(self.chain_id, self.contract, self.channel_id, self.amount)

    @property
    def vrs(self) -> tuple[int, bytes, bytes]:
        """(v, r, s) as the contract's ``close`` takes them."""
        return self.signature[64], self.signature[:32], self.signature[32:64]

    def signer(self) -> str:
        """The checksummed address that signed the voucher. Raises `InvalidSignature`."""
        return recover_address(self.digest, self.signature)

    def to_bytes(self) -> bytes:
        return (
            self.chain_id.to_bytes(8, "big")
            + to_canonical_address(self.contract)
            + _word(self.channel_id)
            + _word(self.amount)
            + self.signature
        )

    @classmethod
    def from_bytes_untrusted(cls, data: bytes) -> Voucher:
        """Decode a voucher from a peer. Raises only `MalformedMessage` (wrong size). Does not verify."""
        if len(data) != VOUCHER_WIRE_SIZE:
            raise MalformedMessage(f"voucher must be {VOUCHER_WIRE_SIZE} bytes, got {len(data)}")
        return cls(
            chain_id=int.from_bytes(data[0:8], "big"),
            contract=to_checksum_address(data[8:28]),
            channel_id=int.from_bytes(data[28:60], "big"),
            amount=int.from_bytes(data[60:92], "big"),
            signature=bytes(data[92:157]),
        )


def sign_voucher(private_key: bytes, chain_id: int, contract: str, channel_id: int, amount: int) -> Voucher:
    """Sign a cumulative voucher. Raises `ValueError` for amounts or ids outside uint256."""
    if not (0 <= amount <= _UINT256_MAX and 0 <= channel_id <= _UINT256_MAX):
        raise ValueError("channel id and amount must fit in uint256")
    contract = _checksum(contract)
    signature = sign_hash(private_key, voucher_digest(chain_id, contract, channel_id, amount))
    return Voucher(chain_id, contract, channel_id, amount, signature)


@dataclass(frozen=True, slots=True)
class ChannelState:
    """What a provider knows about one channel it is paid through: the on-chain facts + the best voucher."""

    chain_id: int
    contract: str
    channel_id: int
    payer: str
    payee: str
    deposit: int
    expires_at: int  # unix seconds, the contract's expiresAt
    open: bool = True
    best: Voucher | None = None

    @property
    def paid(self) -> int:
        """The cumulative amount of the best voucher accepted so far (0 before any)."""
        return self.best.amount if self.best is not None else 0


def accept_voucher(state: ChannelState, voucher: Voucher, *, now: int, margin: int = 0) -> ChannelState:
    """The channel state after accepting ``voucher`` at unix time ``now``.

    ``margin`` is how many seconds before expiry the provider stops accepting, so that it still has time to
    close on chain. Raises (each a `SteppeError`; nothing changes on refusal):
    `WrongChannelDomain` (other chain, contract or channel), `ChannelNotOpen`, `ChannelExpired`,
    `StaleVoucher` (not above the last), `VoucherOverDeposit`, `InvalidSignature` (malformed, high s,
    bad v) or its subclass `WrongVoucherSigner` (signed by someone other than the payer).
    """
    if voucher.chain_id != state.chain_id:
        raise WrongChannelDomain(f"voucher is for chain {voucher.chain_id}, channel is on {state.chain_id}")
    if not _same_address(voucher.contract, state.contract):
        raise WrongChannelDomain(
            f"voucher is for contract {voucher.contract}, channel is in {state.contract}"
        )
    if voucher.channel_id != state.channel_id:
        raise WrongChannelDomain(f"voucher is for channel {voucher.channel_id}, not {state.channel_id}")
    if not state.open:
        raise ChannelNotOpen(f"channel {state.channel_id} is closed")
    if now + margin >= state.expires_at:
        raise ChannelExpired(
            f"channel {state.channel_id} expires at {state.expires_at}; now {now} with a {margin} s margin"
        )
    if voucher.amount <= state.paid:
        raise StaleVoucher(
            f"voucher for {voucher.amount} wei is not above the last accepted ({state.paid} wei)"
        )
    if voucher.amount > state.deposit:
        raise VoucherOverDeposit(
            f"voucher for {voucher.amount} wei exceeds the deposit of {state.deposit} wei"
        )
    signer = voucher.signer()
    if not _same_address(signer, state.payer):
        raise WrongVoucherSigner(f"voucher signed by {signer}, channel payer is {state.payer}")
    return dataclasses.replace(state, best=voucher)
