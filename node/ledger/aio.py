"""`AsyncLedger`: any `Ledger` from trio code. Each call runs in a worker thread, one at a time per ledger
(py-evm mining and HTTP round trips block; the event loop never does)."""

from __future__ import annotations

from functools import partial
from typing import Any

import trio

from node.ledger.abc import Ledger, Log, Receipt


class AsyncLedger:
    """Cancelling a call abandons the wait, not the work: a transaction already handed over may still mine."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.chain_id = ledger.chain_id
        self._limiter = trio.CapacityLimiter(1)

    async def _run(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return await trio.to_thread.run_sync(
            partial(fn, *args, **kwargs), limiter=self._limiter, abandon_on_cancel=True
        )

    async def block_number(self) -> int:
        return await self._run(self.ledger.block_number)

    async def timestamp(self) -> int:
        return await self._run(self.ledger.timestamp)

    async def balance(self, address: str) -> int:
        return await self._run(self.ledger.balance, address)

    async def call(self, to: str, data: bytes, *, sender: str | None = None, value: int = 0) -> bytes:
        return await self._run(self.ledger.call, to, data, sender=sender, value=value)

    async def transact(
        self, private_key: bytes, to: str | None, data: bytes = b"", *, value: int = 0, gas: int | None = None
    ) -> Receipt:
        return await self._run(self.ledger.transact, private_key, to, data, value=value, gas=gas)

    async def logs(self, address: str, **kwargs: Any) -> list[Log]:
        return await self._run(self.ledger.logs, address, **kwargs)

    async def increase_time(self, seconds: int) -> None:
        await self._run(self.ledger.increase_time, seconds)
