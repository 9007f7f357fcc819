"""OpenAI-compatible HTTP routes: ``GET /v1/models``, ``POST /v1/completions``, ``POST /v1/chat/completions``.

A raw ASGI app (streaming needs it) mounted on the node's API under ``/v1``. ``stream: true`` answers with
server-sent events (``data: {json}`` … ``data: [DONE]``). Errors have OpenAI's shape:
``{"error": {"message", "type", "param", "code"}}`` — 400 for bad JSON or parameters and too many tokens,
404 for an unknown model, 503 when no route covers the model's layers, 502 when the hops keep failing.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any

import trio

from node.client import HopFailed
from node.gateway import Completion, Gateway, RequestError
from node.inference.sampling import SamplingParams
from node.logging import get_logger
from protocol.route import NoRoute

log = get_logger("steppe.openai")
_MAX_BODY = 1024 * 1024
_MAX_STOP = 4


class ApiError(Exception):
    def __init__(
        self, status: int, message: str, type_: str, code: str | None = None, param: str | None = None
    ):
        super().__init__(message)
        self.status, self.type, self.code, self.param = status, type_, code, param

    def body(self) -> dict:
        return {"error": {"message": str(self), "type": self.type, "param": self.param, "code": self.code}}


def _bad(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, "invalid_request_error", code, param)


def _field(
    req: dict,
    name: str,
    kinds: tuple[type, ...],
    default: Any,
    lo: float | None = None,
    hi: float | None = None,
) -> Any:
    value = req.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
        raise _bad(f"'{name}' must be {' or '.join(k.__name__ for k in kinds)}", name)
    if lo is not None and value < lo or hi is not None and value > hi:
        raise _bad(f"'{name}' must be between {lo} and {hi}", name)
    return value


class OpenAIApp:
    """Serves one gateway's model. ``default_max_tokens`` applies when a request gives none."""

    def __init__(self, gateway: Gateway, *, default_max_tokens: int = 64) -> None:
        self.gateway = gateway
        self.default_max_tokens = default_max_tokens
        self.requests = 0
        self.tokens_generated = 0

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        method, path = scope["method"], scope["path"].rstrip("/")
        try:
            if path == "/v1/models" and method == "GET":
                await _json(send, 200, self.models())
                return
            if path in ("/v1/completions", "/v1/chat/completions"):
                if method != "POST":
                    raise ApiError(405, f"use POST for {path}", "invalid_request_error")
                req = await _read_json(receive)
                await self.complete(req, send, chat=path.endswith("chat/completions"))
                return
            raise ApiError(404, f"no route {method} {path}", "invalid_request_error", "not_found")
        except ApiError as exc:
            await _json(send, exc.status, exc.body())
        except Exception as exc:  # the boundary of the HTTP server: log our bug, answer 500, keep serving
            log.exception("api_internal_error", path=path)
            err = ApiError(500, f"internal error: {type(exc).__name__}: {exc}"[:500], "api_error", "internal")
            await _json(send, 500, err.body())

    def models(self) -> dict:
        g = self.gateway
        return {
            "object": "list",
            "data": [
                {
                    "id": g.model_id,
                    "object": "model",
                    "created": 0,
                    "owned_by": "steppe",
                    "sha256": g.model.sha256.hex(),
                    "num_layers": g.model.num_layers,
                    "context_length": g.max_context,
                }
            ],
        }

    def _parse(self, req: dict, chat: bool) -> tuple[list[int], int, SamplingParams, list[str], bool, bool]:
        g = self.gateway
        model = req.get("model")
        if not isinstance(model, str):
            raise _bad("'model' is required", "model")
        if not g.knows(model):
            raise ApiError(
                404,
                f"The model '{model}' does not exist here; GET /v1/models lists it",
                "invalid_request_error",
                "model_not_found",
                "model",
            )
        if chat:
            messages = req.get("messages")
            if not isinstance(messages, list) or not messages:
                raise _bad("'messages' must be a non-empty list", "messages")
            clean = []
            for m in messages:
                if (
                    not isinstance(m, dict)
                    or not isinstance(m.get("role"), str)
                    or not isinstance(m.get("content"), str)
                ):
                    raise _bad("each message needs a string 'role' and 'content'", "messages")
                clean.append({"role": m["role"], "content": m["content"]})
            prompt = g.encode_chat(clean)
        else:
            text = req.get("prompt")
            if isinstance(text, list) and len(text) == 1 and isinstance(text[0], str):
                text = text[0]
            if not isinstance(text, str):
                raise _bad("'prompt' must be a string", "prompt")
            prompt = g.tokenizer.encode(text)
        limit = "max_completion_tokens" if chat and "max_completion_tokens" in req else "max_tokens"
        max_tokens = _field(req, limit, (int,), self.default_max_tokens, 1, 1_000_000)
        params = SamplingParams(
            temperature=float(_field(req, "temperature", (int, float), 1.0, 0, 2)),
            top_k=_field(req, "top_k", (int,), 0, 0, 1_000_000),
            top_p=float(_field(req, "top_p", (int, float), 1.0, 0, 1)),
            repetition_penalty=float(_field(req, "repetition_penalty", (int, float), 1.0, 0.01, 10)),
            seed=_field(req, "seed", (int,), None, 0, 2**63 - 1),
        )
        stop = req.get("stop")
        stops = [stop] if isinstance(stop, str) else stop or []
        if (
            not isinstance(stops, list)
            or len(stops) > _MAX_STOP
            or not all(isinstance(s, str) and s for s in stops)
        ):
            raise _bad(f"'stop' must be a string or a list of up to {_MAX_STOP} strings", "stop")
        stream = _field(req, "stream", (bool,), False)
        opts = req.get("stream_options") or {}
        include_usage = bool(isinstance(opts, dict) and opts.get("include_usage"))
        try:
            g.check(prompt, max_tokens)
        except RequestError as exc:
            raise _bad(str(exc), exc.param, exc.code) from exc
        return prompt, max_tokens, params, stops, stream, include_usage

    async def complete(self, req: dict, send: Callable, *, chat: bool) -> None:
        prompt, max_tokens, params, stops, stream, include_usage = self._parse(req, chat)
        self.requests += 1
        ident = ("chatcmpl-" if chat else "cmpl-") + os.urandom(12).hex()
        created = int(time.time())
        kind = "chat.completion" if chat else "text_completion"
        done = Completion()

        def usage() -> dict:
            n = len(done.tokens)
            return {"prompt_tokens": len(prompt), "completion_tokens": n, "total_tokens": len(prompt) + n}

        def choice(text: str | None, finish: str | None, role: bool = False) -> dict:
            if chat:
                delta: dict = {} if text is None else {"content": text}
                if role:
                    delta = {"role": "assistant", "content": ""}
                return {
                    "index": 0,
                    "delta" if stream else "message": delta,
                    "finish_reason": finish,
                    "logprobs": None,
                }
            return {"index": 0, "text": text or "", "finish_reason": finish, "logprobs": None}

        def chunk(text: str | None, finish: str | None, role: bool = False) -> bytes:
            obj = {
                "id": ident,
                "object": kind + (".chunk" if chat else ""),
                "created": created,
                "model": self.gateway.model_id,
                "choices": [choice(text, finish, role)],
            }
            return b"data: " + json.dumps(obj).encode() + b"\n\n"

        text, finish = "", None
        started = False
        try:
            async for delta in self.gateway.stream(prompt, max_tokens, params, done):
                text += delta
                cut = _first_stop(text, stops)
                if cut is not None:
                    delta = delta[: len(delta) - (len(text) - cut)]
                    text, finish = text[:cut], "stop"
                if stream:
                    if not started:
                        await _sse_start(send)
                        started = True
                        if chat:
                            await _sse(send, chunk(None, None, role=True))
                    if delta:
                        await _sse(send, chunk(delta, None))
                if finish:
                    break
        except (NoRoute, HopFailed) as exc:
            status, code = (503, "no_route") if isinstance(exc, NoRoute) else (502, "hop_failed")
            err = ApiError(status, str(exc), "service_unavailable" if status == 503 else "api_error", code)
            log.warning("generation_failed", error=str(exc)[:300])
            if not started:
                raise err from exc
            await _sse(send, b"data: " + json.dumps(err.body()).encode() + b"\n\n")
            await _sse(send, b"data: [DONE]\n\n", more=False)
            return
        finish = finish or done.finish_reason
        self.tokens_generated += len(done.tokens)
        stats = done.stats.as_dict()
        if stream:
            if not started:
                await _sse_start(send)
            await _sse(send, chunk(None if chat else "", finish))
            if include_usage:
                obj = {
                    "id": ident,
                    "object": kind + (".chunk" if chat else ""),
                    "created": created,
                    "model": self.gateway.model_id,
                    "choices": [],
                    "usage": usage(),
                    "steppe": stats,
                }
                await _sse(send, b"data: " + json.dumps(obj).encode() + b"\n\n")
            await _sse(send, b"data: [DONE]\n\n", more=False)
            return
        if chat:
            ch = {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": finish,
                "logprobs": None,
            }
        else:
            ch = {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}
        await _json(
            send,
            200,
            {
                "id": ident,
                "object": kind,
                "created": created,
                "model": self.gateway.model_id,
                "choices": [ch],
                "usage": usage(),
                "steppe": stats,
            },
        )


def _first_stop(text: str, stops: list[str]) -> int | None:
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(hits) if hits else None


async def _read_json(receive: Callable) -> dict:
    body = bytearray()
    while True:
        event = await receive()
        body += event.get("body", b"")
        if len(body) > _MAX_BODY:
            raise ApiError(413, f"request body over {_MAX_BODY} bytes", "invalid_request_error")
        if not event.get("more_body"):
            break
    try:
        req = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _bad(f"the body is not valid JSON: {exc}") from exc
    if not isinstance(req, dict):
        raise _bad("the body must be a JSON object")
    return req


async def _json(send: Callable, status: int, payload: Any) -> None:
    data = json.dumps(payload).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


async def _sse_start(send: Callable) -> None:
    headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})


async def _sse(send: Callable, data: bytes, more: bool = True) -> None:
    await send({"type": "http.response.body", "body": data, "more_body": more})
    await trio.sleep(0)
