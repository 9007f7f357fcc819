"""A headless Chromium driven over the DevTools protocol (no browser download: Debian's ``chromium``).

Collects every console error, uncaught exception and browser log error of the page it opens.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio
from trio_websocket import open_websocket_url

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--no-first-run",
    "--no-default-browser-check",
    "--window-size=1280,1500",
    "--remote-debugging-port=0",
)


def chromium_path() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


class Page:
    def __init__(self, ws, session: str) -> None:
        self.ws, self.session = ws, session
        self.ids = itertools.count(1)
        self.replies: dict[int, trio.MemorySendChannel] = {}
        self.errors: list[str] = []

    async def pump(self) -> None:
        while True:
            msg = json.loads(await self.ws.get_message())
            if "id" in msg and msg["id"] in self.replies:
                await self.replies.pop(msg["id"]).send(msg)
                continue
            method, params = msg.get("method"), msg.get("params", {})
            if method == "Runtime.exceptionThrown":
                details = params["exceptionDetails"]
                self.errors.append(
                    "exception: " + details.get("exception", {}).get("description", details.get("text", ""))
                )
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                self.errors.append(
                    "console: " + " ".join(str(a.get("value", a.get("description"))) for a in params["args"])
                )
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                self.errors.append(
                    "log: " + params["entry"].get("text", "") + " " + params["entry"].get("url", "")
                )

    async def call(self, method: str, session: bool = True, **params: Any) -> dict:
        msg_id = next(self.ids)
        send, recv = trio.open_memory_channel(1)
        self.replies[msg_id] = send
        msg: dict[str, Any] = {"id": msg_id, "method": method, "params": params}
        if session:
            msg["sessionId"] = self.session
        await self.ws.send_message(json.dumps(msg))
        with trio.fail_after(20):
            reply = await recv.receive()
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    async def evaluate(self, expression: str) -> Any:
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def screenshot(self, path: Path) -> bytes:
        data = base64.b64decode((await self.call("Page.captureScreenshot", format="png"))["data"])
        path.write_bytes(data)
        return data


@asynccontextmanager
async def open_page(url: str, profile: Path) -> AsyncIterator[Page]:
    """Start Chromium, open ``url`` in a fresh tab and yield it. Raises `RuntimeError` when it cannot start."""
    exe = chromium_path()
    assert exe is not None
    profile.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [exe, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        port_file = profile / "DevToolsActivePort"
        with trio.fail_after(30):
            while not (port_file.exists() and len(port_file.read_text().splitlines()) >= 2):
                if proc.poll() is not None:
                    raise RuntimeError(f"chromium exited with {proc.returncode}")
                await trio.sleep(0.1)
        port, path = port_file.read_text().splitlines()[:2]
        async with open_websocket_url(
            f"ws://127.0.0.1:{port}{path}", max_message_size=64 * 1024 * 1024
        ) as ws:
            async with trio.open_nursery() as nursery:
                page = Page(ws, "")
                nursery.start_soon(page.pump)
                target = await page.call("Target.createTarget", session=False, url="about:blank")
                attached = await page.call(
                    "Target.attachToTarget", session=False, targetId=target["targetId"], flatten=True
                )
                page.session = attached["sessionId"]
                for domain in ("Runtime", "Log", "Page"):
                    await page.call(f"{domain}.enable")
                await page.call("Page.navigate", url=url)
                yield page
                nursery.cancel_scope.cancel()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
