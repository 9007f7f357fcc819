"""Tokenizer (`tokenizer.json` via `tokenizers`) and chat template (`tokenizer_config.json`, jinja2)."""

from __future__ import annotations

import json
from pathlib import Path

from node.inference.config import ModelLoadError


class TextTokenizer:
    """Encode/decode text and render chat messages. Raises `ModelLoadError` when the files are bad."""

    def __init__(self, model_dir: Path):
        from tokenizers import Tokenizer

        path = Path(model_dir) / "tokenizer.json"
        try:
            self.tok = Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises its own opaque exception type
            raise ModelLoadError(f"{path}: cannot load tokenizer: {exc}") from exc
        self.chat_template: str | None = None
        self.special: dict[str, str] = {}
        cfg_path = Path(model_dir) / "tokenizer_config.json"
        if cfg_path.exists():
            try:
                cfg = json.loads(cfg_path.read_text())
            except ValueError as exc:
                raise ModelLoadError(f"{cfg_path}: not valid JSON") from exc
            self.chat_template = cfg.get("chat_template")
            self.special = {k: v for k, v in cfg.items() if k.endswith("_token") and isinstance(v, str)}

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=True)

    def token_id(self, token: str) -> int | None:
        return self.tok.token_to_id(token)

    def apply_chat_template(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """Render `messages` with the checkpoint's template (or a plain fallback when it has none)."""
        if not self.chat_template:
            text = "".join(f"{m['role']}: {m['content']}\n" for m in messages)
            return text + ("assistant: " if add_generation_prompt else "")
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        return env.from_string(self.chat_template).render(
            messages=messages, add_generation_prompt=add_generation_prompt, **self.special
        )
