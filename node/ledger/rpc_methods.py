"""Standard Ethereum JSON-RPC methods over an `EmbeddedChain`: what web3.py, cast and friends need.

`RpcMethods.dispatch` takes one decoded request object and returns one response object (never raises):
malformed requests, unknown methods and bad params become JSON-RPC error objects. Calls block; the server
runs them in a worker thread. Like anvil, the chain's dev accounts are unlocked for `eth_sendTransaction`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from eth.exceptions import PyEVMError
from eth_account import Account
from eth_utils import ValidationError, is_hex_address, to_checksum_address

from node.ledger.abc import LedgerError
from node.ledger.embedded import GAS_LIMIT, EmbeddedChain
from node.ledger.embedded_ledger import sign_transaction

PARSE_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND, INVALID_PARAMS, SERVER_ERROR, REVERTED = (
    -32700,
    -32600,
    -32601,
    -32602,
    -32000,
    3,
)
MAX_TIME_JUMP = 100 * 365 * 86400  # keeps block timestamps far inside uint64
CLIENT_VERSION = "steppe-embedded/0.1.0 (py-evm 0.12.1b1)"


class RpcError(Exception):
    def __init__(self, code: int, message: str, data: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.data = code, message, data


def error_response(request_id: Any, code: int, message: str, data: str | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return {"jsonrpc": "2.0", "id": request_id, "error": error}


def q(value: int) -> str:
    return hex(value)


def d(value: bytes) -> str:
    return "0x" + bytes(value).hex()


def _int(value: Any, name: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.startswith("0x"):
        try:
            return int(value, 16)
        except ValueError:
            pass
    raise RpcError(INVALID_PARAMS, f"{name} must be a 0x-prefixed hex quantity")


def _bytes(value: Any, name: str) -> bytes:
    if isinstance(value, str) and value.startswith("0x") and len(value) % 2 == 0:
        try:
            return bytes.fromhex(value[2:])
        except ValueError:
            pass
    raise RpcError(INVALID_PARAMS, f"{name} must be 0x-prefixed hex data")


def _address(value: Any, name: str) -> str:
    if not isinstance(value, str) or not is_hex_address(value):
        raise RpcError(INVALID_PARAMS, f"{name} must be a 20-byte hex address")
    return to_checksum_address(value)


class RpcMethods:
    def __init__(self, chain: EmbeddedChain, *, on_submit: Callable[[], None] = lambda: None) -> None:
        self.chain = chain
        self.on_submit = on_submit  # wakes the miner
        self.accounts = {Account.from_key(k).address: k for k in chain.dev_keys}
        self._methods: dict[str, Callable[..., Any]] = {
            name[4:]: getattr(self, name) for name in dir(self) if name.startswith("rpc_")
        }

    def dispatch(self, request: Any) -> dict[str, Any]:
        if (
            not isinstance(request, dict)
            or request.get("jsonrpc") != "2.0"
            or not isinstance(request.get("method"), str)
        ):
            return error_response(
                request.get("id") if isinstance(request, dict) else None, INVALID_REQUEST, "invalid request"
            )
        request_id, params = request.get("id"), request.get("params", [])
        method = self._methods.get(request["method"])
        if method is None:
            return error_response(
                request_id, METHOD_NOT_FOUND, f"method {request['method']!r} is not supported"
            )
        if not isinstance(params, list):
            return error_response(request_id, INVALID_PARAMS, "params must be an array")
        try:
            result = method(*params)
        except RpcError as exc:
            return error_response(request_id, exc.code, exc.message, exc.data)
        except TypeError as exc:
            return error_response(request_id, INVALID_PARAMS, f"wrong number of params: {exc}")
        except LedgerError as exc:
            return error_response(request_id, SERVER_ERROR, str(exc))
        except (ValidationError, PyEVMError) as exc:
            # The EVM refused: insufficient funds, unknown block hash, out-of-range slot and the like.
            return error_response(request_id, SERVER_ERROR, str(exc))
        except (KeyError, ValueError, AttributeError, IndexError) as exc:
            # Params of the right JSON type but the wrong shape (an object missing a field, a hex string
            # that is no valid value): the caller's mistake, answered as such.
            return error_response(request_id, INVALID_PARAMS, f"invalid params: {exc!r}")
        return {"jsonrpc": "2.0", "id": request_id, "result": result}

    # -- helpers ----------------------------------------------------------------------------------------

    def _block_number(self, tag: Any = "latest") -> int | None:
        """None means the latest state; a number is a past block."""
        if tag in ("latest", "pending", "safe", "finalized", None):
            return None
        if tag == "earliest":
            return 0
        if isinstance(tag, dict):  # EIP-1898 {"blockNumber": ...} / {"blockHash": ...}
            if "blockHash" in tag:
                return self.chain.block_by_hash(_bytes(tag["blockHash"], "blockHash")).header.block_number
            return self._block_number(tag.get("blockNumber"))
        number = _int(tag, "block")
        if number > self.chain.head().block_number:
            raise RpcError(INVALID_PARAMS, f"block {number} is not mined yet")
        return number

    def _call_args(self, tx: Any) -> dict[str, Any]:
        if not isinstance(tx, dict):
            raise RpcError(INVALID_PARAMS, "transaction must be an object")
        data = tx.get("input", tx.get("data", "0x"))
        return {
            "to": _address(tx["to"], "to") if tx.get("to") else None,
            "data": _bytes(data, "data"),
            "sender": _address(tx["from"], "from") if tx.get("from") else None,
            "value": _int(tx.get("value", "0x0"), "value"),
        }

    def _format_tx(self, tx: Any, block: Any | None, index: int | None) -> dict[str, Any]:
        out = {
            "hash": d(tx.hash),
            "nonce": q(tx.nonce),
            "from": to_checksum_address(tx.sender),
            "to": to_checksum_address(tx.to) if tx.to else None,
            "value": q(tx.value),
            "gas": q(tx.gas),
            "input": d(tx.data),
            "type": q(getattr(tx, "type_id", None) or 0),
            "chainId": q(self.chain.chain_id),
            "maxFeePerGas": q(tx.max_fee_per_gas),
            "maxPriorityFeePerGas": q(tx.max_priority_fee_per_gas),
            "gasPrice": q(tx.max_fee_per_gas),
            "accessList": [],
            "v": q(getattr(tx, "y_parity", getattr(tx, "v", 0))),
            "r": q(tx.r),
            "s": q(tx.s),
            "blockHash": d(block.hash) if block else None,
            "blockNumber": q(block.header.block_number) if block else None,
            "transactionIndex": q(index) if index is not None else None,
        }
        if getattr(tx, "type_id", None) == 2:
            out["yParity"] = out["v"]
        return out

    def _format_block(self, block: Any, full: bool) -> dict[str, Any]:
        h = block.header
        return {
            "number": q(h.block_number),
            "hash": d(h.hash),
            "parentHash": d(h.parent_hash),
            "nonce": d(h.nonce),
            "sha3Uncles": d(h.uncles_hash),
            "logsBloom": d(h.bloom.to_bytes(256, "big")),
            "transactionsRoot": d(h.transaction_root),
            "stateRoot": d(h.state_root),
            "receiptsRoot": d(h.receipt_root),
            "miner": to_checksum_address(h.coinbase),
            "difficulty": q(h.difficulty),
            "totalDifficulty": q(0),
            "extraData": d(h.extra_data),
            "size": q(len(block.transactions) * 200 + 600),
            "gasLimit": q(h.gas_limit),
            "gasUsed": q(h.gas_used),
            "timestamp": q(h.timestamp),
            "mixHash": d(h.mix_hash),
            "baseFeePerGas": q(h.base_fee_per_gas),
            "transactions": [
                self._format_tx(tx, block, i) if full else d(tx.hash)
                for i, tx in enumerate(block.transactions)
            ],
            "uncles": [],
        }

    # -- chain facts ------------------------------------------------------------------------------------

    def rpc_web3_clientVersion(self) -> str:
        return CLIENT_VERSION

    def rpc_net_version(self) -> str:
        return str(self.chain.chain_id)

    def rpc_net_listening(self) -> bool:
        return True

    def rpc_eth_syncing(self) -> bool:
        return False

    def rpc_eth_chainId(self) -> str:
        return q(self.chain.chain_id)

    def rpc_eth_blockNumber(self) -> str:
        return q(self.chain.head().block_number)

    def rpc_eth_accounts(self) -> list[str]:
        return list(self.accounts)

    def rpc_eth_gasPrice(self) -> str:
        return q(2 * self.chain.next_base_fee())

    def rpc_eth_maxPriorityFeePerGas(self) -> str:
        return q(0)

    def rpc_eth_feeHistory(
        self, count: Any, newest: Any = "latest", percentiles: Any = None
    ) -> dict[str, Any]:
        n = min(_int(count, "blockCount") if not isinstance(count, int) else count, 1024)
        last = self._block_number(newest)
        last = self.chain.head().block_number if last is None else last
        first = max(0, last - n + 1)
        blocks = [self.chain.block_by_number(i).header for i in range(first, last + 1)]
        return {
            "oldestBlock": q(first),
            "baseFeePerGas": [q(b.base_fee_per_gas) for b in blocks] + [q(self.chain.next_base_fee())],
            "gasUsedRatio": [b.gas_used / b.gas_limit for b in blocks],
            "reward": [[q(0) for _ in (percentiles or [])] for _ in blocks],
        }

    # -- state ------------------------------------------------------------------------------------------

    def rpc_eth_getBalance(self, address: Any, block: Any = "latest") -> str:
        return q(self.chain.balance(_address(address, "address"), self._block_number(block)))

    def rpc_eth_getTransactionCount(self, address: Any, block: Any = "latest") -> str:
        address = _address(address, "address")
        if block == "pending":
            return q(self.chain.pending_nonce(address))
        return q(self.chain.nonce(address, self._block_number(block)))

    def rpc_eth_getCode(self, address: Any, block: Any = "latest") -> str:
        return d(self.chain.code(_address(address, "address"), self._block_number(block)))

    def rpc_eth_getStorageAt(self, address: Any, slot: Any, block: Any = "latest") -> str:
        value = self.chain.storage(
            _address(address, "address"), _int(slot, "slot"), self._block_number(block)
        )
        return d(value.to_bytes(32, "big"))

    def rpc_eth_call(self, tx: Any, block: Any = "latest", *_overrides: Any) -> str:
        result = self.chain.call(**self._call_args(tx), at=self._block_number(block))
        if not result.success:
            raise RpcError(REVERTED, "execution reverted", d(result.output))
        return d(result.output)

    def rpc_eth_estimateGas(self, tx: Any, block: Any = "latest") -> str:
        args = self._call_args(tx)
        result = self.chain.call(**args)
        if not result.success:
            raise RpcError(REVERTED, "execution reverted", d(result.output))
        return q(
            self.chain.estimate_gas(args["to"], args["data"], sender=args["sender"], value=args["value"])
        )

    # -- transactions -----------------------------------------------------------------------------------

    def rpc_eth_sendRawTransaction(self, raw: Any) -> str:
        tx_hash = self.chain.submit_raw(_bytes(raw, "transaction"))
        self.on_submit()
        return d(tx_hash)

    def rpc_eth_sendTransaction(self, tx: Any) -> str:
        args = self._call_args(tx)
        sender = args["sender"]
        if sender is None or sender not in self.accounts:
            raise RpcError(SERVER_ERROR, f"unknown account {sender}: only the dev accounts are unlocked")
        if "gas" in tx:
            gas = _int(tx["gas"], "gas")
        else:
            result = self.chain.call(**args)
            if not result.success:
                raise RpcError(REVERTED, "execution reverted", d(result.output))
            gas = min(
                GAS_LIMIT,
                self.chain.estimate_gas(args["to"], args["data"], sender=sender, value=args["value"]),
            )
        max_fee = tx.get("maxFeePerGas", tx.get("gasPrice"))
        raw = sign_transaction(
            self.accounts[sender],
            chain_id=self.chain.chain_id,
            nonce=_int(tx["nonce"], "nonce") if "nonce" in tx else self.chain.pending_nonce(sender),
            to=args["to"],
            data=args["data"],
            value=args["value"],
            gas=gas,
            max_fee=_int(max_fee, "maxFeePerGas") if max_fee is not None else 2 * self.chain.next_base_fee(),
            priority_fee=_int(tx.get("maxPriorityFeePerGas", "0x0"), "maxPriorityFeePerGas"),
        )
        return self.rpc_eth_sendRawTransaction(d(raw))

    def rpc_eth_getTransactionByHash(self, tx_hash: Any) -> dict[str, Any] | None:
        r = self.chain.receipt(_bytes(tx_hash, "hash"))
        return None if r is None else self._format_tx(r["tx"], r["block"], r["index"])

    def rpc_eth_getTransactionReceipt(self, tx_hash: Any) -> dict[str, Any] | None:
        r = self.chain.receipt(_bytes(tx_hash, "hash"))
        if r is None:
            return None
        block, tx = r["block"], r["tx"]
        base = {
            "blockHash": d(block.hash),
            "blockNumber": q(block.header.block_number),
            "transactionHash": d(tx.hash),
            "transactionIndex": q(r["index"]),
        }
        return {
            **base,
            "from": to_checksum_address(tx.sender),
            "to": to_checksum_address(tx.to) if tx.to else None,
            "cumulativeGasUsed": q(r["cumulative_gas_used"]),
            "gasUsed": q(r["gas_used"]),
            "effectiveGasPrice": q(r["effective_gas_price"]),
            "contractAddress": to_checksum_address(r["contract_address"]) if r["contract_address"] else None,
            "logs": [
                {
                    **base,
                    "address": to_checksum_address(a),
                    "topics": [d(t) for t in topics],
                    "data": d(data),
                    "logIndex": q(i),
                    "removed": False,
                }
                for i, a, topics, data in r["logs"]
            ],
            "logsBloom": d(r["bloom"].to_bytes(256, "big")),
            "status": q(r["status"]),
            "type": q(getattr(tx, "type_id", None) or 0),
        }

    # -- blocks and logs --------------------------------------------------------------------------------

    def rpc_eth_getBlockByNumber(self, tag: Any, full: Any = False) -> dict[str, Any] | None:
        number = self._block_number(tag)
        number = self.chain.head().block_number if number is None else number
        return self._format_block(self.chain.block_by_number(number), bool(full))

    def rpc_eth_getBlockByHash(self, block_hash: Any, full: Any = False) -> dict[str, Any] | None:
        try:
            block = self.chain.block_by_hash(_bytes(block_hash, "hash"))
        except Exception:  # BlockNotFound / HeaderNotFound
            return None
        return self._format_block(block, bool(full))

    def rpc_eth_getLogs(self, query: Any) -> list[dict[str, Any]]:
        if not isinstance(query, dict):
            raise RpcError(INVALID_PARAMS, "filter must be an object")
        head = self.chain.head().block_number
        start = self._block_number(query.get("fromBlock", "latest"))
        end = self._block_number(query.get("toBlock", "latest"))
        address = query.get("address")
        addresses = [address] if isinstance(address, str) else address or []
        topics = [
            None
            if t is None
            else [_bytes(x, "topic") for x in t]
            if isinstance(t, list)
            else _bytes(t, "topic")
            for t in query.get("topics") or []
        ]
        hashes: dict[int, bytes] = {}
        out = []
        for block, index, tx_index, tx_hash, addr, tops, data in self.chain.logs(
            address=[_address(a, "address") for a in addresses] or None,
            topics=topics,  # type: ignore[arg-type]
            from_block=head if start is None else start,
            to_block=head if end is None else end,
        ):
            if block not in hashes:
                hashes[block] = self.chain.block_by_number(block).hash
            out.append(
                {
                    "address": to_checksum_address(addr),
                    "topics": [d(t) for t in tops],
                    "data": d(data),
                    "blockNumber": q(block),
                    "blockHash": d(hashes[block]),
                    "transactionHash": d(tx_hash),
                    "transactionIndex": q(tx_index),
                    "logIndex": q(index),
                    "removed": False,
                }
            )
        return out

    # -- development (anvil/hardhat compatible) ---------------------------------------------------------

    def rpc_evm_mine(self, *_: Any) -> str:
        self.chain.mine()
        return "0x0"

    def rpc_evm_increaseTime(self, seconds: Any) -> str:
        seconds = _int(seconds, "seconds")
        if not 0 <= seconds <= MAX_TIME_JUMP:
            raise RpcError(INVALID_PARAMS, f"seconds must be between 0 and {MAX_TIME_JUMP}")
        return q(self.chain.increase_time(seconds))

    def rpc_evm_setNextBlockTimestamp(self, timestamp: Any) -> None:
        timestamp = _int(timestamp, "timestamp")
        head = self.chain.head().timestamp
        if not head < timestamp <= head + MAX_TIME_JUMP:
            raise RpcError(
                INVALID_PARAMS,
                f"timestamp must be after the latest block's ({head}) and within {MAX_TIME_JUMP} s",
            )
        self.chain.set_next_timestamp(timestamp)
