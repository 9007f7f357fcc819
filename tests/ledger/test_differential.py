"""Our off-chain voucher verifier and the contract's `ecrecover` path agree on every voucher, good or bad.

The oracle is the contract itself, executed by py-evm (`voucherSigner` is exactly what `close` checks).
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node.ledger.channels import ChannelClient
from node.ledger.embedded import dev_key
from node.ledger.embedded_ledger import EmbeddedLedger
from protocol.errors import InvalidSignature
from protocol.evm import SECP256K1_N, address_of_private_key
from protocol.voucher import sign_voucher, typed_data, voucher_digest

ZERO = "0x0000000000000000000000000000000000000000"

keys = st.integers(min_value=1, max_value=SECP256K1_N - 1).map(lambda n: n.to_bytes(32, "big"))
uint256 = st.integers(min_value=0, max_value=2**256 - 1)
small = st.integers(min_value=0, max_value=10**24)


def ours(digest: bytes, signature: bytes) -> str:
    from protocol.evm import recover_address

    try:
        return recover_address(digest, signature)
    except InvalidSignature:
        return ZERO


def _high_s_twin(signature: bytes) -> bytes:
    """The other valid-on-the-curve encoding of the same signature: (r, n - s, v flipped)."""
    s = int.from_bytes(signature[32:64], "big")
    return signature[:32] + (SECP256K1_N - s).to_bytes(32, "big") + bytes([55 - signature[64]])


mutations = st.one_of(
    st.just("none"),
    st.just("high_s"),
    st.tuples(st.just("v"), st.integers(0, 255)),
    st.tuples(st.just("r"), uint256),
    st.tuples(st.just("s"), uint256),
    st.tuples(st.just("flip"), st.integers(0, 64 * 8 - 1)),
    st.just("r_zero"),
    st.just("s_zero"),
    st.just("r_at_n"),
)


def mutate(signature: bytes, how: object) -> bytes:
    if how == "none":
        return signature
    if how == "high_s":
        return _high_s_twin(signature)
    if how == "r_zero":
        return b"\0" * 32 + signature[32:]
    if how == "s_zero":
        return signature[:32] + b"\0" * 32 + signature[64:]
    if how == "r_at_n":
        return SECP256K1_N.to_bytes(32, "big") + signature[32:]
    kind, value = how  # type: ignore[misc]
    if kind == "v":
        return signature[:64] + bytes([value])
    if kind == "r":
        return value.to_bytes(32, "big") + signature[32:]
    if kind == "s":
        return signature[:32] + value.to_bytes(32, "big") + signature[64:]
    bit = value
    out = bytearray(signature)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=keys, channel_id=uint256, amount=small, how=mutations)
def test_the_offchain_verifier_and_the_contract_recover_the_same_signer(
    embedded: tuple[EmbeddedLedger, str], key: bytes, channel_id: int, amount: int, how: object
) -> None:
    ledger, contract = embedded
    client = ChannelClient(ledger, contract, dev_key(0))
    voucher = sign_voucher(key, ledger.chain_id, contract, channel_id, amount)
    signature = mutate(voucher.signature, how)

    on_chain = client.voucher_signer(channel_id, amount, signature)
    off_chain = ours(voucher.digest, signature)
    assert on_chain == off_chain
    if how == "none":
        assert off_chain == address_of_private_key(key)
    if how == "high_s":
        assert off_chain == ZERO  # the twin recovers the same key but both sides refuse high s


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(channel_id=uint256, amount=uint256)
def test_the_eip712_digest_is_the_contracts(
    embedded: tuple[EmbeddedLedger, str], channel_id: int, amount: int
) -> None:
    ledger, contract = embedded
    client = ChannelClient(ledger, contract, dev_key(0))
    assert client.voucher_digest(channel_id, amount) == voucher_digest(
        ledger.chain_id, contract, channel_id, amount
    )


def test_eth_account_signs_the_same_typed_data() -> None:
    """An outside implementation of EIP-712 (eth-account) produces the same digest and signature."""
    from eth_account import Account
    from eth_account.messages import encode_typed_data

    contract = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
    key = dev_key(7)
    typed = typed_data(1337, contract, 42, 10**15)  # the types are spelt out there, as a wallet sees them
    theirs = Account.sign_message(encode_typed_data(full_message=typed), key)
    voucher = sign_voucher(key, 1337, contract, 42, 10**15)
    assert voucher.signature == bytes(theirs.signature)
