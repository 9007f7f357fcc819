"""A gateway turns text requests into distributed generations: tokenizer + chat template + `Client`.

It holds the model's tokenizer files (a gateway needs no weights) and streams text deltas as tokens
arrive. Incomplete UTF-8 at the end of a partial decode is held back until the next token completes it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from node.client import Client, GenerationStats
from node.inference.config import ModelConfig
from node.inference.sampling import Sampler, SamplingParams
from node.inference.tokenizer import TextTokenizer
from protocol.advert import ModelRef
from protocol.errors import SteppeError


class RequestError(SteppeError):
    """A request that cannot be served as asked; ``code`` names the OpenAI-style error code."""

    def __init__(self, message: str, code: str = "invalid_request_error", param: str | None = None) -> None:
        super().__init__(message)
        self.code, self.param = code, param


@dataclass
class Completion:
    """What a finished generation produced."""

    text: str = ""
    tokens: list[int] = field(default_factory=list)
    finish_reason: str = "length"
    stats: GenerationStats = field(default_factory=GenerationStats)


class Gateway:
    def __init__(self, model_dir: Path, model: ModelRef, client: Client, *, max_context: int = 2048) -> None:
        self.model_dir, self.model, self.client = model_dir, model, client
        self.tokenizer = TextTokenizer(model_dir)
        self.config = ModelConfig.load(model_dir)
        self.max_context = min(max_context, self.config.max_position_embeddings)
        self.stop_tokens = frozenset(self.config.eos_token_ids)

    @property
    def model_id(self) -> str:
        return self.model.name

    def knows(self, model: str) -> bool:
        return model in (self.model.name, self.model.sha256.hex())

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        return self.tokenizer.encode(self.tokenizer.apply_chat_template(messages, add_generation_prompt=True))

    def check(self, prompt: list[int], max_tokens: int) -> None:
        """Raises `RequestError` for an empty prompt or one that does not fit the context."""
        if not prompt:
            raise RequestError("the prompt encodes to no tokens", param="prompt")
        if max_tokens < 1:
            raise RequestError("max_tokens must be at least 1", param="max_tokens")
        if len(prompt) + max_tokens > self.max_context:
            raise RequestError(
                f"this model's context is {self.max_context} tokens; the prompt has {len(prompt)} and "
                f"max_tokens asks for {max_tokens}",
                code="context_length_exceeded",
                param="max_tokens",
            )

    async def stream(
        self, prompt: list[int], max_tokens: int, params: SamplingParams, completion: Completion
    ) -> AsyncIterator[str]:
        """Yield text deltas; fills ``completion`` as it goes. Raises `NoRoute`, `HopFailed`, `RequestError`."""
        self.check(prompt, max_tokens)
        params = SamplingParams(
            params.temperature,
            params.top_k,
            params.top_p,
            params.repetition_penalty,
            params.stop_tokens | self.stop_tokens,
            params.seed,
        )
        sent = ""
        async for tok in self.client.generate(prompt, max_tokens, Sampler(params), completion.stats):
            completion.tokens.append(tok)
            text = self.tokenizer.decode(completion.tokens)
            if text.endswith("\ufffd"):
                continue  # an incomplete multi-byte character: wait for the rest
            delta, sent = text[len(sent) :], text
            completion.text = text
            if delta:
                yield delta
        completion.text = self.tokenizer.decode(completion.tokens)
        if completion.text[len(sent) :]:
            yield completion.text[len(sent) :]
        completion.finish_reason = "length" if len(completion.tokens) >= max_tokens else "stop"
