"""`steppe chain serve`: the embedded chain over standard Ethereum JSON-RPC (HTTP POST, single or batch).

A miner task batches transactions: a submission wakes it, it waits ``batch_window`` seconds for more, then
mines everything pending as one block in a worker thread (py-evm blocks; the event loop never does).
"""

from __future__ import annotations

import json
from functools import partial
from typing import Any

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve

from node.ledger.embedded import EmbeddedChain
from node.ledger.rpc_methods import INVALID_REQUEST, PARSE_ERROR, RpcMethods, error_response
from node.logging import get_logger

MAX_BODY = 4 * 1024 * 1024
MAX_BATCH = 256


def log():  # looked up at each use: a logger bound at import would miss configure_logging
    return get_logger("ledger.server")


class ChainServer:
    """Owns nothing but its tasks: the caller opens and closes ``chain``."""

    def __init__(
        self, chain: EmbeddedChain, *, host: str = "127.0.0.1", port: int = 8545, batch_window: float = 0.02
    ) -> None:
        self.chain = chain
        self.methods = RpcMethods(chain)
        self.host, self.port, self.batch_window = host, port, batch_window
        self._limiter = trio.CapacityLimiter(1)  # py-evm work in order, one thread at a time
        self._wake_send, self._wake_recv = trio.open_memory_channel[None](1)

    async def run(self, *, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
        config = HypercornConfig()
        config.bind = [f"{self.host}:{self.port}"]
        config.accesslog = None
        config.errorlog = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._mine_forever)
            binds = await nursery.start(
                partial(serve, self._app, config, shutdown_trigger=trio.sleep_forever)
            )
            log().info(
                "chain_serving", urls=binds, chain_id=self.chain.chain_id, accounts=len(self.methods.accounts)
            )
            task_status.started(binds)

    async def _mine_forever(self) -> None:
        async for _ in self._wake_recv:
            await trio.sleep(self.batch_window)
            if self.chain.pending_count:
                await trio.to_thread.run_sync(self.chain.mine, limiter=self._limiter)

    async def handle(self, body: bytes) -> Any:
        """The JSON response to one HTTP body (a request object or a batch array)."""
        try:
            request = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return error_response(None, PARSE_ERROR, "parse error")
        if isinstance(request, list):
            if not request or len(request) > MAX_BATCH:
                return error_response(None, INVALID_REQUEST, f"a batch holds 1 to {MAX_BATCH} requests")
            responses = [await self._one(r) for r in request]
        else:
            responses = await self._one(request)
        if self.chain.pending_count:
            try:
                self._wake_send.send_nowait(None)
            except trio.WouldBlock:
                pass  # the miner is already due to run
        return responses

    async def _one(self, request: Any) -> dict[str, Any]:
        return await trio.to_thread.run_sync(self.methods.dispatch, request, limiter=self._limiter)

    async def _app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > MAX_BODY:
                await self._reply(send, 413, error_response(None, INVALID_REQUEST, "request too large"))
                return
        if scope["method"] != "POST":
            await self._reply(send, 405, error_response(None, INVALID_REQUEST, "use HTTP POST"))
            return
        await self._reply(send, 200, await self.handle(body))

    @staticmethod
    async def _reply(send: Any, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": data})
