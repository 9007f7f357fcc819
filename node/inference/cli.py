"""`steppe model make-tiny` and `steppe generate`."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from protocol.errors import ConfigError

model_app = typer.Typer(help="Model files: make a tiny random checkpoint, inspect one.", no_args_is_help=True)


@model_app.command("make-tiny")
def make_tiny_cmd(
    out: Annotated[Path, typer.Option("--out", help="Folder to write the checkpoint into.")],
    arch: Annotated[str, typer.Option("--arch", help="llama, mistral, qwen2 or qwen3.")] = "llama",
    layers: Annotated[int, typer.Option("--layers")] = 2,
    hidden: Annotated[int, typer.Option("--hidden")] = 64,
    heads: Annotated[int, typer.Option("--heads")] = 4,
    kv_heads: Annotated[int, typer.Option("--kv-heads")] = 2,
    vocab: Annotated[int, typer.Option("--vocab")] = 512,
    intermediate: Annotated[int | None, typer.Option("--intermediate")] = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    dtype: Annotated[str, typer.Option("--dtype", help="float32, float16 or bfloat16.")] = "float32",
    files: Annotated[int, typer.Option("--files", help="Split the weights over N files with an index.")] = 1,
) -> None:
    """Write a random-weight checkpoint in Hugging Face format (the demo model and the test fixture)."""
    from node.inference.maketiny import make_tiny
    from node.inference.weights import model_reference

    cfg = make_tiny(
        out,
        arch=arch,
        layers=layers,
        hidden=hidden,
        heads=heads,
        kv_heads=kv_heads,
        vocab=vocab,
        intermediate=intermediate,
        seed=seed,
        dtype=dtype,
        files=files,
    )
    typer.echo(
        json.dumps(
            {"out": str(out), "arch": arch, "params": cfg.param_count(), "sha256": model_reference(out)}
        )
    )


@model_app.command("info")
def info_cmd(model: Annotated[Path, typer.Option("--model")]) -> None:
    """Validate a checkpoint and print its architecture and model reference (sha256 of the weight files)."""
    from node.inference.weights import Checkpoint, model_reference

    ck = Checkpoint(model)
    cfg = ck.config
    ck.validate(0, cfg.num_layers, True, True)
    typer.echo(
        json.dumps(
            {
                "arch": cfg.arch,
                "layers": cfg.num_layers,
                "hidden": cfg.hidden_size,
                "vocab": cfg.vocab_size,
                "params": cfg.param_count(),
                "sha256": model_reference(model),
            }
        )
    )


def generate_cmd(
    prompt: Annotated[str, typer.Argument(help="The prompt text.")],
    model: Annotated[Path, typer.Option("--model", help="Checkpoint folder (Hugging Face format).")],
    layers: Annotated[
        str | None, typer.Option("--layers", help="Layer range A:B to run (default: all).")
    ] = None,
    split: Annotated[int, typer.Option("--split", help="Run as a chain of N in-process shards.")] = 1,
    max_tokens: Annotated[int, typer.Option("--max-tokens")] = 32,
    temperature: Annotated[float, typer.Option("--temperature")] = 0.0,
    top_k: Annotated[int, typer.Option("--top-k")] = 0,
    top_p: Annotated[float, typer.Option("--top-p")] = 1.0,
    repetition_penalty: Annotated[float, typer.Option("--repetition-penalty")] = 1.0,
    seed: Annotated[int | None, typer.Option("--seed")] = None,
    devices: Annotated[
        str | None, typer.Option("--devices", help="e.g. CPU:0,CPU:1 (default: auto-detect).")
    ] = None,
    weight_dtype: Annotated[
        str | None,
        typer.Option(
            "--weight-dtype", help="Store matrices as float32, bfloat16 or float16 (default: compute dtype)."
        ),
    ] = None,
    chat: Annotated[bool, typer.Option("--chat", help="Wrap the prompt with the chat template.")] = False,
    wire_dtype: Annotated[
        str, typer.Option("--wire-dtype", help="Hidden states between shards: float32 or float16.")
    ] = "float32",
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object at the end instead of streaming.")
    ] = False,
) -> None:
    """Run the model locally (one shard or a chain of in-process shards) and stream the text."""
    import trio

    from node.inference.config import ModelConfig, parse_layers
    from node.inference.generate import generate
    from node.inference.sampling import Sampler, SamplingParams
    from node.inference.shard import parse_devices
    from node.inference.tokenizer import TextTokenizer
    from node.inference.worker import AsyncShard

    t_start = time.monotonic()
    cfg = ModelConfig.load(model)
    start, end = parse_layers(layers, cfg.num_layers) if layers else (0, cfg.num_layers)
    if (start, end) != (0, cfg.num_layers):
        raise ConfigError(
            "generate needs the whole model locally: --layers must cover every layer (use --split to chain)"
        )
    if split < 1 or split > end - start:
        raise ConfigError(f"--split must be between 1 and {end - start}")
    tok = TextTokenizer(model)
    text = tok.apply_chat_template([{"role": "user", "content": prompt}]) if chat else prompt
    ids = tok.encode(text)
    if not ids:
        raise ConfigError("the prompt encodes to no tokens")
    bounds = [start + (end - start) * k // split for k in range(split + 1)]
    devs = parse_devices(devices)
    ctx = len(ids) + max_tokens
    stops = frozenset(cfg.eos_token_ids)
    params = SamplingParams(temperature, top_k, top_p, repetition_penalty, stops, seed)

    async def main() -> dict:
        chain = [
            await AsyncShard.load(
                model,
                start=a,
                end=b,
                embed=a == 0,
                head=b == cfg.num_layers,
                devices=devs,
                weight_dtype=weight_dtype,
                max_sessions=1,
                max_context=max(ctx, 16),
            )
            for a, b in zip(bounds, bounds[1:], strict=False)
        ]
        t_ready = time.monotonic()
        out: list[int] = []
        t_first = None
        printed = ""
        async for t in generate(chain, ids, max_tokens, Sampler(params), wire_dtype):
            if t_first is None:
                t_first = time.monotonic()
            out.append(t)
            now = tok.decode(out)
            # Hold back text that ends inside a multi-byte character until its last byte arrives.
            if not as_json and not now.endswith("\ufffd"):
                sys.stdout.write(now[len(printed) :])
                sys.stdout.flush()
                printed = now
        t_end = time.monotonic()
        if not as_json:
            sys.stdout.write("\n")
        ttft = (t_first or t_end) - t_ready
        decode_s = t_end - (t_first or t_end)
        return {
            "text": tok.decode(out),
            "tokens": out,
            "prompt_tokens": len(ids),
            "load_s": round(t_ready - t_start, 3),
            "ttft_s": round(ttft, 4),
            "ttft_after_start_s": round((t_first or t_end) - t_start, 3),
            "decode_tok_s": round((len(out) - 1) / decode_s, 2) if len(out) > 1 and decode_s > 0 else None,
        }

    result = trio.run(main)
    if as_json:
        typer.echo(json.dumps(result))
    else:
        typer.echo(json.dumps({k: v for k, v in result.items() if k not in ("text", "tokens")}), err=True)


def register(app: typer.Typer) -> None:
    app.add_typer(model_app, name="model")
    app.command("generate")(generate_cmd)
