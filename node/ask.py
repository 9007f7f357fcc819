"""`steppe ask` over HTTP: stream a completion from a node's OpenAI-compatible API."""

from __future__ import annotations

import json
from typing import TextIO

import httpx

from protocol.errors import SteppeError


class AskError(SteppeError):
    """The API refused or failed the request; the message is the API's error message."""


def ask_api(
    api: str,
    prompt: str,
    *,
    model: str | None = None,
    max_tokens: int = 32,
    temperature: float = 0.0,
    seed: int | None = None,
    chat: bool = True,
    out: TextIO,
    timeout_s: float = 300.0,
) -> dict:
    """Stream the answer to ``out``; returns the generation's stats (route, hops, tokens/s). Raises `AskError`."""
    base = (api if "://" in api else f"http://{api}").rstrip("/")
    if base.endswith("/v1"):
        base = base[:-3]
    with httpx.Client(base_url=base, timeout=timeout_s) as http:
        try:
            if model is None:
                models = http.get("/v1/models").json()["data"]
                if not models:
                    raise AskError(f"{base} serves no model")
                model = models[0]["id"]
            body: dict = {
                "model": model,
                "max_tokens": max_tokens,
                "temperature": temperature,
                "stream": True,
                "stream_options": {"include_usage": True},
            }
            if seed is not None:
                body["seed"] = seed
            if chat:
                body["messages"] = [{"role": "user", "content": prompt}]
            else:
                body["prompt"] = prompt
            path = "/v1/chat/completions" if chat else "/v1/completions"
            stats: dict = {}
            with http.stream("POST", path, json=body) as reply:
                if reply.status_code != 200:
                    reply.read()
                    try:
                        message = reply.json()["error"]["message"]
                    except (ValueError, KeyError, TypeError):
                        message = reply.text[:500]
                    raise AskError(f"{reply.status_code}: {message}")
                for line in reply.iter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    event = json.loads(line[6:])
                    if "error" in event:
                        raise AskError(event["error"]["message"])
                    for choice in event.get("choices", []):
                        text = choice.get("delta", {}).get("content") if chat else choice.get("text")
                        if text:
                            out.write(text)
                            out.flush()
                    if event.get("steppe"):
                        stats = event["steppe"]
            out.write("\n")
            return stats
        except httpx.HTTPError as exc:
            raise AskError(f"cannot reach {base} ({exc}); is a node serving its API there?") from exc


def ask_p2p(
    bootstrap: list[str],
    model_dir,
    prompt: str,
    *,
    max_tokens: int = 32,
    temperature: float = 0.0,
    seed: int | None = None,
    chat: bool = True,
    out: TextIO,
    discover_timeout_s: float = 60.0,
) -> dict:
    """Join the network as a throw-away client node, route, generate, leave. Returns the stats.

    ``model_dir`` supplies the tokenizer and config (a client needs no weights). Raises `AskError` when the
    swarm does not cover the model's layers within ``discover_timeout_s``.
    """
    from pathlib import Path

    import trio

    from node.app import open_node
    from node.config import Config, NodeSection
    from node.gateway import Completion
    from node.inference.sampling import SamplingParams
    from node.model_services import ModelSettings
    from protocol.identity import Identity
    from protocol.route import NoRoute

    config = Config(node=NodeSection(listen=("/ip4/127.0.0.1/tcp/0",), bootstrap=tuple(bootstrap), api=""))

    async def main() -> dict:
        async with open_node(config, Identity.generate(), model=ModelSettings(path=Path(model_dir))) as node:
            gateway = node.model.gateway
            ids = (
                gateway.encode_chat([{"role": "user", "content": prompt}])
                if chat
                else gateway.tokenizer.encode(prompt)
            )
            with trio.move_on_after(discover_timeout_s):
                while True:
                    try:
                        gateway.client.route(0, gateway.model.num_layers, len(ids) + max_tokens)
                        break
                    except NoRoute:
                        await trio.sleep(0.5)
            done = Completion()
            try:
                async for delta in gateway.stream(
                    ids, max_tokens, SamplingParams(temperature=temperature, seed=seed), done
                ):
                    out.write(delta)
                    out.flush()
            except NoRoute as exc:
                raise AskError(f"{exc} (after waiting {discover_timeout_s:.0f} s for adverts)") from exc
            out.write("\n")
            return done.stats.as_dict()

    return trio.run(main)
