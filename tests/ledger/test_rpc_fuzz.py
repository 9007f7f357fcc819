"""Whatever a JSON-RPC client sends, the server answers with a result or a JSON-RPC error object."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from eth_account import Account
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node.ledger.embedded import EmbeddedChain, dev_key
from node.ledger.rpc_methods import RpcMethods

DEV = [Account.from_key(dev_key(i)).address for i in range(2)]
FIELDS = [
    "to",
    "from",
    "data",
    "input",
    "value",
    "gas",
    "nonce",
    "blockHash",
    "blockNumber",
    "fromBlock",
    "toBlock",
    "address",
    "topics",
    "maxFeePerGas",
    "gasPrice",
]
hexes = st.one_of(
    st.binary(max_size=40).map(lambda b: "0x" + b.hex()),
    st.binary(min_size=20, max_size=20).map(lambda b: "0x" + b.hex()),  # addresses
    st.binary(min_size=32, max_size=32).map(lambda b: "0x" + b.hex()),  # hashes, slots, topics
    st.sampled_from(DEV).map(lambda a: a.lower()),
    st.integers(min_value=0, max_value=2**300).map(hex),
    st.sampled_from(["latest", "pending", "earliest", "0x", "0xzz", "0x0"]),
)
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**300), st.text(max_size=8), hexes
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(FIELDS), inner, max_size=5)
    ),
    max_leaves=12,
)


@pytest.fixture(scope="module")
def methods() -> Iterator[RpcMethods]:
    chain = EmbeddedChain(None)
    yield RpcMethods(chain)
    chain.close()


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    method=st.sampled_from(
        [
            "eth_getBalance",
            "eth_getTransactionCount",
            "eth_getCode",
            "eth_getStorageAt",
            "eth_call",
            "eth_estimateGas",
            "eth_sendRawTransaction",
            "eth_sendTransaction",
            "eth_getTransactionReceipt",
            "eth_getTransactionByHash",
            "eth_getBlockByNumber",
            "eth_getBlockByHash",
            "eth_getLogs",
            "eth_feeHistory",
            "evm_increaseTime",
            "evm_setNextBlockTimestamp",
            "eth_chainId",
            "no_such_method",
        ]
    ),
    params=st.one_of(st.lists(values, max_size=3), values),
    request_id=st.one_of(st.none(), st.integers(), st.text(max_size=4)),
)
def test_random_requests_get_a_result_or_an_error_object(
    methods: RpcMethods, method: str, params: object, request_id: object
) -> None:
    response = methods.dispatch({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params})
    assert ("result" in response) != ("error" in response)
    if "error" in response:
        assert isinstance(response["error"]["code"], int)
    json.dumps(response)


def test_time_travel_methods_set_the_next_block_time(methods: RpcMethods) -> None:
    def call(method: str, *params: object) -> object:
        response = methods.dispatch({"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)})
        assert "result" in response, response
        return response["result"]

    head = int(call("eth_getBlockByNumber", "latest", False)["timestamp"], 16)  # type: ignore[index]
    call("evm_setNextBlockTimestamp", hex(head + 1000))
    call("evm_mine")
    assert int(call("eth_getBlockByNumber", "latest", False)["timestamp"], 16) == head + 1000  # type: ignore[index]
    call("evm_increaseTime", 50)
    assert int(call("eth_getBlockByNumber", "latest", False)["timestamp"], 16) == head + 1050  # type: ignore[index]
    assert "error" in methods.dispatch(
        {"jsonrpc": "2.0", "id": 1, "method": "evm_setNextBlockTimestamp", "params": [hex(head)]}
    )
