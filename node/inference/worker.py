"""The tinygrad worker thread and the async (trio) face of a shard that serving code awaits.

tinygrad keeps global state (schedule and kernel caches, the jit's captured graphs) and is not thread-safe,
so every tinygrad call in the process goes through one dedicated worker thread. A shard split over several
devices still runs on that thread: tinygrad itself dispatches to the devices. Cancelling an awaiting trio
task does not stop a step that has started; its result is dropped.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import trio

from node.inference.shard import Shard

T = TypeVar("T")


class DeviceWorker:
    """One thread that runs submitted callables in order. Owned by the process (see `tinygrad_worker`)."""

    def __init__(self, name: str = "tinygrad"):
        self._q: queue.SimpleQueue[tuple[Callable[[], Any], Future] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while (job := self._q.get()) is not None:
            fn, fut = job
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn())
            except BaseException as exc:
                fut.set_exception(exc)

    def submit(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> Future[T]:
        fut: Future[T] = Future()
        self._q.put((lambda: fn(*args, **kwargs), fut))
        return fut

    def run_sync(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run on the worker and block the calling (non-worker) thread until done."""
        if threading.current_thread() is self._thread:
            return fn(*args, **kwargs)
        return self.submit(fn, *args, **kwargs).result()

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run on the worker and await the result from trio without blocking the event loop."""
        fut = self.submit(fn, *args, **kwargs)
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()

        def wake(_: Future) -> None:
            try:
                token.run_sync_soon(done.set)
            except trio.RunFinishedError:
                pass

        fut.add_done_callback(wake)
        await done.wait()
        return fut.result()


_worker: DeviceWorker | None = None
_worker_lock = threading.Lock()


def tinygrad_worker() -> DeviceWorker:
    """The process's single tinygrad thread, started on first use."""
    global _worker
    with _worker_lock:
        if _worker is None:
            _worker = DeviceWorker()
        return _worker


class AsyncShard:
    """What the serving and client code call. Every method runs the engine on the tinygrad worker.

    Raises what `Shard` raises: `ModelLoadError` at load, `SessionError` for bad session requests.
    """

    def __init__(self, shard: Shard, worker: DeviceWorker):
        self.shard, self.worker = shard, worker

    @classmethod
    async def load(cls, model_dir: Path, **kwargs: Any) -> AsyncShard:
        worker = tinygrad_worker()
        return cls(await worker.run(Shard, model_dir, **kwargs), worker)

    @classmethod
    def load_sync(cls, model_dir: Path, **kwargs: Any) -> AsyncShard:
        worker = tinygrad_worker()
        return cls(worker.run_sync(Shard, model_dir, **kwargs), worker)

    async def open_session(self, max_tokens: int) -> int:
        return await self.worker.run(self.shard.open_session, max_tokens)

    async def forward(self, session: int, inputs: np.ndarray, start_pos: int) -> np.ndarray:
        """Token ids (1-D int) or hidden rows (n, hidden) in; hidden rows or logits (n, vocab) out."""
        return await self.worker.run(self.shard.forward, session, inputs, start_pos)

    async def close_session(self, session: int) -> None:
        await self.worker.run(self.shard.close_session, session)

    async def evict_idle(self) -> list[int]:
        return await self.worker.run(self.shard.evict_idle)

    async def describe(self) -> dict[str, object]:
        return await self.worker.run(self.shard.describe)

    @property
    def has_head(self) -> bool:
        return self.shard.head
