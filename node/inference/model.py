"""The tinygrad forward pass of one shard: layers [start, end) of a Llama-family model.

Layers may be spread over several devices (each stage lives on one device; hidden states hop between
them inside the compiled graph). Every session slot owns a fixed region of one KV cache allocated at
construction: a TinyJit replays the exact buffers it captured, so caches are never reallocated — a new
session simply starts writing at position 0 again. The slot and the position are symbolic variables, so
one compiled decode step and one compiled prefill chunk serve every slot and every position.
"""

from __future__ import annotations

import ctypes
import math
import os
import threading
from dataclasses import dataclass

import numpy as np
from tinygrad import Tensor, TinyJit, UOp, dtypes
from tinygrad.engine.jit import _prepare_jit_inputs

from node.inference.config import ModelConfig
from node.inference.weights import LazyTensors

_DT = {"float32": dtypes.float32, "float16": dtypes.float16, "bfloat16": dtypes.bfloat16}


def rope_tables(cfg: ModelConfig, length: int) -> tuple[np.ndarray, np.ndarray]:
    """cos/sin of shape (length, head_dim) in the half-split layout Hugging Face uses, float32 like it."""
    dim = cfg.head_dim
    inv = (1.0 / (cfg.rope_theta ** (np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / dim))).astype(
        np.float32
    )
    rs = cfg.rope_scaling or {}
    if rs.get("rope_type", rs.get("type")) == "llama3":
        factor, lo, hi = float(rs["factor"]), float(rs["low_freq_factor"]), float(rs["high_freq_factor"])
        old = float(rs["original_max_position_embeddings"])
        wavelen = 2 * math.pi / inv
        smooth = (old / wavelen - lo) / (hi - lo)
        scaled = np.where(wavelen > old / lo, inv / factor, inv)
        mid = (1 - smooth) * scaled / factor + smooth * scaled
        inv = np.where((wavelen >= old / hi) & (wavelen <= old / lo), mid, scaled).astype(np.float32)
    freqs = np.outer(np.arange(length, dtype=np.float32), inv).astype(np.float32)
    emb = np.concatenate([freqs, freqs], axis=-1)
    return np.cos(emb).astype(np.float32), np.sin(emb).astype(np.float32)


def _rms(x: Tensor, w: Tensor, eps: float) -> Tensor:
    return x * (x.square().mean(-1, keepdim=True) + eps).rsqrt() * w


def _rotate_half(x: Tensor) -> Tensor:
    h = x.shape[-1] // 2
    return (-x[..., h:]).cat(x[..., :h], dim=-1)


@dataclass
class Layer:
    w: dict[str, Tensor]
    k_cache: Tensor
    v_cache: Tensor
    device: str


class ShardModel:
    """Compiled forward of one shard. Not thread-safe: call it from one thread only (the device worker)."""

    def __init__(
        self,
        cfg: ModelConfig,
        start: int,
        end: int,
        weights: LazyTensors | dict[str, np.ndarray],
        *,
        embed: bool,
        head: bool,
        devices: list[str],
        slots: int,
        max_context: int,
        chunk: int = 16,
        dtype: str = "float32",
        weight_dtype: str | None = None,
    ):
        """`weights` maps Hugging Face names to float32 arrays; entries are popped (read) one at a time."""
        self.cfg, self.start, self.end, self.embed, self.head = cfg, start, end, embed, head
        self.devices, self.slots, self.max_context, self.chunk = devices, slots, max_context, chunk
        self.dtype = _DT[dtype]
        # Matrices may be stored narrower than the compute dtype (half the bytes per token at fp16);
        # they are widened inside each matmul kernel. Norms, biases and caches stay in the compute dtype.
        self.wdtype = _DT[weight_dtype or dtype]
        n = end - start
        per = -(-n // len(devices))
        cos, sin = rope_tables(cfg, max_context + chunk)
        self._rope = {
            d: (Tensor(cos, device=d).realize(), Tensor(sin, device=d).realize()) for d in set(devices)
        }

        def put(a: np.ndarray, dev: str) -> Tensor:
            dt = self.wdtype if a.ndim == 2 else self.dtype
            return Tensor(a, device=dev).cast(dt).contiguous().realize()

        self.layers: list[Layer] = []
        cache_shape = (slots, cfg.num_kv_heads, max_context + chunk, cfg.head_dim)
        for i in range(start, end):
            dev = devices[(i - start) // per]
            p = f"model.layers.{i}."
            w = {k[len(p) :]: put(weights.pop(k), dev) for k in [k for k in weights if k.startswith(p)]}
            kc = Tensor.zeros(*cache_shape, dtype=self.dtype, device=dev).contiguous().realize()
            vc = Tensor.zeros(*cache_shape, dtype=self.dtype, device=dev).contiguous().realize()
            self.layers.append(Layer(w, kc, vc, dev))
        self.first_dev, self.last_dev = devices[0], devices[-1] if not self.layers else self.layers[-1].device
        self.embed_w = put(weights["model.embed_tokens.weight"], self.first_dev) if embed else None
        self.norm_w = put(weights["model.norm.weight"], self.last_dev) if head else None
        if head:
            tied = "lm_head.weight" not in weights
            self.lm_w = put(weights["model.embed_tokens.weight" if tied else "lm_head.weight"], self.last_dev)
        weights.clear()
        self.v_slot = UOp.variable("slot", 0, slots - 1)
        self.v_pos = UOp.variable("start_pos", 0, max_context - 1)
        # Preallocated inputs: the jits capture these buffers; we write new values into them in place.
        h = cfg.hidden_size
        self.inputs = {
            ("tokens", 1): Tensor.zeros(1, 1, dtype=dtypes.int32, device=self.first_dev)
            .contiguous()
            .realize(),
            ("tokens", chunk): Tensor.zeros(1, chunk, dtype=dtypes.int32, device=self.first_dev)
            .contiguous()
            .realize(),
            ("hidden", 1): Tensor.zeros(1, 1, h, device=self.first_dev).contiguous().realize(),
            ("hidden", chunk): Tensor.zeros(1, chunk, h, device=self.first_dev).contiguous().realize(),
        }
        self.jits = {key: TinyJit(self._forward) for key in self.inputs}
        for jit in self.jits.values():
            # Capture on the first call: TinyJit's default plain first run only schedules the whole graph once
            # more (weights, caches and tables are realized above; the forward creates nothing one-time).
            jit.cnt = 1
        self._replay: dict[tuple[str, int], tuple] = {}
        # A/B switches for benchmarks; both default on. fast_cpu: replay CPU graphs with `CpuReplay` (else
        # tinygrad's replay). matvec_split: decode matmuls split by rows (`_row_pieces`; else whole).
        self.fast_cpu = True
        self.matvec_split = True

    def _mat(self, w: Tensor) -> Tensor:
        return (w if w.dtype == self.dtype else w.cast(self.dtype)).T

    def _row_pieces(self, device: str, t: int, rows: int) -> list[tuple[int, int]]:
        """Row ranges to split a one-row CPU matmul with many output rows into (decode: gate, up, LM head).

        tinygrad's CPU heuristic upcasts the output rows of a matmul once it has >= 1024 of them, which
        halves the bandwidth the kernel streams its weights at; below that it unrolls the reduction by 4
        and splits the rows over the threads, like down_proj. Pieces of < 1024 rows get that schedule
        (~2x the bandwidth); concatenating the pieces costs one tiny copy. Only the rounding of the sums
        changes (the whole model stays ~6e-6 from transformers).
        """
        if not self.matvec_split or t != 1 or not device.startswith("CPU") or rows < 1024:
            return [(0, rows)]
        n = -(-rows // 1016)
        size = (rows + n * 8 - 1) // (n * 8) * 8  # ceil(rows / n) rounded up to 8 rows (thread splits)
        return [(a, min(a + size, rows)) for a in range(0, rows, size)]

    def _attention(self, layer: Layer, x: Tensor, slot: UOp, pos: UOp, mask: Tensor | None) -> Tensor:
        cfg, w = self.cfg, layer.w
        B, T, _ = x.shape
        hd, nh, nkv = cfg.head_dim, cfg.num_heads, cfg.num_kv_heads

        def proj(name: str) -> Tensor:
            y = x.linear(self._mat(w[name + ".weight"]), w.get(name + ".bias"))
            return y

        q = proj("self_attn.q_proj").reshape(B, T, nh, hd)
        k = proj("self_attn.k_proj").reshape(B, T, nkv, hd)
        v = proj("self_attn.v_proj").reshape(B, T, nkv, hd)
        if cfg.qk_norm:
            q = _rms(q, w["self_attn.q_norm.weight"], cfg.rms_norm_eps)
            k = _rms(k, w["self_attn.k_norm.weight"], cfg.rms_norm_eps)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        cos, sin = self._rope[layer.device]
        c, s = cos[pos : pos + T].reshape(1, 1, T, hd), sin[pos : pos + T].reshape(1, 1, T, hd)
        q = q * c + _rotate_half(q) * s
        k = k * c + _rotate_half(k) * s
        layer.k_cache[slot : slot + 1, :, pos : pos + T, :].assign(k.cast(self.dtype))
        layer.v_cache[slot : slot + 1, :, pos : pos + T, :].assign(v.cast(self.dtype))
        keys = layer.k_cache[slot : slot + 1, :, 0 : pos + T, :]
        vals = layer.v_cache[slot : slot + 1, :, 0 : pos + T, :]
        attn = q.scaled_dot_product_attention(keys, vals, attn_mask=mask, enable_gqa=True)
        attn = attn.transpose(1, 2).reshape(B, T, nh * hd)
        return attn.linear(self._mat(w["self_attn.o_proj.weight"]))

    def _block(self, layer: Layer, x: Tensor, slot: UOp, pos: UOp, mask: Tensor | None) -> Tensor:
        w, eps = layer.w, self.cfg.rms_norm_eps
        # contiguous(): otherwise the norm fuses into each matmul and is recomputed for every output row
        h = x + self._attention(
            layer, _rms(x, w["input_layernorm.weight"], eps).contiguous(), slot, pos, mask
        )
        y = _rms(h, w["post_attention_layernorm.weight"], eps).contiguous()
        # contiguous(): fused together, the gate and up reductions become one nested (quadratic) loop
        wg, wu = w["mlp.gate_proj.weight"], w["mlp.up_proj.weight"]
        pieces = self._row_pieces(layer.device, x.shape[1], wg.shape[0])
        if len(pieces) == 1:
            up = y.linear(self._mat(wg)).contiguous().silu() * y.linear(self._mat(wu))
        else:
            ups = [
                (y.linear(self._mat(wg[a:b])).contiguous().silu() * y.linear(self._mat(wu[a:b]))).contiguous()
                for a, b in pieces
            ]
            up = ups[0].cat(*ups[1:], dim=-1).contiguous()
        mlp = up.linear(self._mat(w["mlp.down_proj.weight"]))
        return (h + mlp).contiguous()

    def _forward(self, inp: Tensor, slot: UOp, pos: UOp) -> Tensor:
        x = self.embed_w[inp] if inp.dtype == dtypes.int32 else inp
        x = x.cast(self.dtype)
        t = x.shape[1]
        masks: dict[str, Tensor | None] = {}
        if t > 1:
            # Causal mask for a chunk at `pos`. tinygrad's triu builds its aranges on the default device, so
            # the mask is built there once and copied to each device that needs it.
            causal = Tensor.full((1, 1, t, pos + t), float("-inf"), dtype=self.dtype).triu(pos + 1)
            masks = {d: causal.to(d) for d in {layer.device for layer in self.layers}}
        for layer in self.layers:
            x = self._block(layer, x.to(layer.device), slot, pos, masks.get(layer.device))
        if self.head:
            x = _rms(x.to(self.last_dev), self.norm_w, self.cfg.rms_norm_eps).contiguous()
            pieces = self._row_pieces(self.last_dev, x.shape[1], self.lm_w.shape[0])
            if len(pieces) == 1:
                x = x.linear(self._mat(self.lm_w))
            else:
                parts = [x.linear(self._mat(self.lm_w[a:b])).contiguous() for a, b in pieces]
                x = parts[0].cat(*parts[1:], dim=-1)
        return x.float().contiguous()

    def run(self, inp: np.ndarray, slot: int, pos: int) -> np.ndarray:
        """One compiled step over `inp` ((T,) int token ids or (T, hidden) floats, T = 1 or chunk).

        Writes keys/values of positions [pos, pos+T) of `slot` and returns (T, hidden) or (T, vocab) float32.
        """
        kind = "tokens" if inp.dtype.kind in "iu" else "hidden"
        t = inp.shape[0]
        key = (kind, t)
        buf = self.inputs[key]
        arr = np.ascontiguousarray(inp, dtype=np.int32 if kind == "tokens" else np.float32)
        if arr.size != buf.numel():
            raise ValueError(f"input of {arr.size} values for a step of {buf.numel()}")
        b = buf.uop.buffer.ensure_allocated()
        b.allocator._copyin(b._buf, memoryview(arr.reshape(-1)).cast("B"))
        fast = self._replay.get(key)
        if fast is not None:
            # Replay without TinyJit.__call__: its per-call input checks cost more than a small shard's kernels.
            captured, in_uops, var_vals, out_buf = fast
            var_vals["slot"], var_vals["start_pos"] = slot, pos
            captured(in_uops, var_vals)
        else:
            jit = self.jits[key]
            out = jit(buf, self.v_slot.bind(slot), self.v_pos.bind(pos))
            if jit.captured is not None:
                self._replay[key] = self._replay_entry(jit, buf, slot, pos, out)
            out_buf = out.uop.buffer
        # The jit reuses its output buffer on the next call: copy the values out now, in one memmove.
        res = np.empty((t, out_buf.size // t), np.float32)
        out_buf.allocator._copyout(memoryview(res.reshape(-1)).cast("B"), out_buf._buf)
        return res

    def _replay_entry(self, jit: TinyJit, buf: Tensor, slot: int, pos: int, out: Tensor) -> tuple:
        """What replaying `jit` needs, taken from tinygrad's own input preparation once, at capture."""
        in_uops, var_vals, _, _ = _prepare_jit_inputs((buf, self.v_slot.bind(slot), self.v_pos.bind(pos)), {})
        runner = CpuReplay.build(jit.captured, in_uops) if self.fast_cpu else None
        return runner or jit.captured, in_uops, dict(var_vals), out.uop.buffer


class CpuReplay:
    """Replays a captured CPU graph by calling its compiled kernels directly, threaded kernels in parallel.

    tinygrad's replay re-resolves every kernel's buffers and launch sizes in Python (tens of microseconds per
    kernel, hundreds of kernels per token) and runs the per-thread parts of a threaded kernel one after the
    other on the calling thread. A captured graph always uses the same buffers, so their addresses are read
    once here; each thread part of a kernel is an independent call (the heuristic splits an output axis), so
    parts run on a small pool of helper threads (ctypes releases the GIL during the call). Same kernels, same
    arguments: results are bit-identical to tinygrad's replay.
    """

    def __init__(self, steps: list[tuple], threads: int):
        self.steps, self.helpers = steps, threads - 1

    @staticmethod
    def build(captured, in_uops: list) -> CpuReplay | None:
        """A replayer for `captured`, or None when it holds anything but plain LLVM/clang CPU kernels."""
        try:
            from tinygrad.engine.realize import get_runtime, resolve_params
            from tinygrad.runtime.ops_cpu import CPUProgram
            from tinygrad.uop.ops import Ops

            steps, threads = [], 1
            for call in captured.linear.src:
                ast = call.src[0]
                dev = call.src[1].device
                if ast.op is not Ops.PROGRAM or not isinstance(dev, str):
                    return None
                rt = get_runtime(dev, ast)
                if not isinstance(rt, CPUProgram) or rt.lvp or rt.runtimevars and len(rt.runtimevars) != 1:
                    return None
                resolved = resolve_params(call, tuple(in_uops))
                info = ast.arg
                addrs = [resolved[i].buffer.ensure_allocated().get_buf(dev).va_addr for i in info.globals]
                names = [v.expr for v in info.vars]
                gsize = info.global_size[0]
                if not isinstance(gsize, int) or info.global_size[1:] not in ((1, 1), ()):
                    return None
                core = next(iter(rt.runtimevars.values()), None)
                nthreads = gsize if core is not None else 1
                threads = max(threads, nthreads)
                fixed = [ctypes.c_uint64(a) for a in addrs]
                steps.append((rt.fxn, fixed, names, core, nthreads))
            return CpuReplay(steps, threads)
        except Exception:  # an internal layout this code does not know: use tinygrad's own replay
            return None

    def __call__(self, in_uops: list, var_vals: dict[str, int]) -> None:
        c64, pool = ctypes.c_uint64, _PartPool.shared(self.helpers) if self.helpers else None
        for fxn, fixed, names, core, nthreads in self.steps:
            args = fixed + [c64(var_vals.get(k, 0)) for k in names] if names else fixed
            if nthreads == 1:
                fxn(*args)
                continue
            parts = []
            for tid in range(nthreads):
                a = list(args)
                a[core] = c64(tid)
                parts.append(a)
            if pool is None:
                for a in parts:
                    fxn(*a)
            else:
                pool.run(fxn, parts)


class _PartPool:
    """Helper threads that run the thread parts of one kernel alongside the calling thread.

    One pool per helper count per process, shared by every shard (all of them run on the one tinygrad thread).
    """

    _pools: dict[int, _PartPool] = {}

    @classmethod
    def forget_after_fork(cls) -> None:
        cls._pools = {}  # a forked child has none of the parent's threads: start new ones when needed

    @classmethod
    def shared(cls, helpers: int) -> _PartPool:
        if helpers not in cls._pools:
            cls._pools[helpers] = cls(helpers)
        return cls._pools[helpers]

    def __init__(self, helpers: int):
        self.go = [threading.Semaphore(0) for _ in range(helpers)]
        self.done = threading.Semaphore(0)
        self.work: list = [None] * helpers
        for i in range(helpers):
            threading.Thread(target=self._loop, args=(i,), name=f"cpu-part-{i}", daemon=True).start()

    def _loop(self, i: int) -> None:
        while True:
            self.go[i].acquire()
            fxn, parts = self.work[i]
            for a in parts:
                fxn(*a)
            self.done.release()

    def run(self, fxn, parts: list) -> None:
        n = len(self.go) + 1
        used = 0
        for i in range(min(len(self.go), len(parts) - 1)):
            self.work[i] = (fxn, parts[i + 1 :: n])
            self.go[i].release()
            used += 1
        for a in parts[0::n]:
            fxn(*a)
        for _ in range(used):
            self.done.acquire()


os.register_at_fork(after_in_child=_PartPool.forget_after_fork)
