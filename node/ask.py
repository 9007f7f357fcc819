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
