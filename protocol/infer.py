"""`/steppe/infer/1`: wire messages of sealed, layer-sharded inference (type ids 60-79).

One libp2p stream carries one session between a client and one hop. Every frame on it is an `InferFrame`
whose ``sealed`` bytes are a `protocol.seal` payload: client → hop sealed to the hop's X25519 key (from its
advert), hop → client sealed to the per-session ``reply_key`` the client sent in `OpenSession`. Inside the
seal is one codec frame of the messages below. Nothing readable crosses the wire but the session id.

Conversation::

    client: OpenSession            hop: SessionOpened | InferError
    client: Forward (repeat)       hop: ForwardResult | InferError
    client: CloseSession (or just closes the stream)
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from . import codec
from .errors import MalformedMessage
from .voucher import VOUCHER_WIRE_SIZE

PROTOCOL_ID = "/steppe/infer/1"
#: Largest sealed body: a prefill chunk of hidden states or a row of logits fits with room to spare.
MAX_SEALED = 8 * 1024 * 1024
SESSION_ID_SIZE = 16
#: Most tokens/rows one Forward may carry.
MAX_ROWS = 4096

Sha256 = Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)]
Key32 = Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)]
Layer = Annotated[int, msgspec.Meta(ge=0, le=100_000)]
Count = Annotated[int, msgspec.Meta(ge=0, le=2**31 - 1)]
Code = Annotated[str, msgspec.Meta(max_length=32)]

#: busy: no free session slot or cache tokens (route around); bad_request: the request cannot be served
#: (wrong model, layers, sizes); session: unknown/expired session or bad positions; payment: not paid;
#: internal: our bug.
ERROR_CODES = ("busy", "bad_request", "session", "payment", "internal")


@codec.register
class InferFrame(codec.Message, frozen=True):
    TYPE_ID = 60
    MAX_SIZE = MAX_SEALED + 128

    session: Annotated[bytes, msgspec.Meta(min_length=SESSION_ID_SIZE, max_length=SESSION_ID_SIZE)]
    sealed: Annotated[bytes, msgspec.Meta(max_length=MAX_SEALED)]


@codec.register
class OpenSession(codec.Message, frozen=True):
    TYPE_ID = 61
    MAX_SIZE = 512

    model_sha256: Sha256
    layer_start: Layer
    layer_end: Layer
    max_tokens: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)]
    reply_key: Key32
    #: Wire dtype of hidden states in both directions: "float32" or "float16".
    wire_dtype: Annotated[str, msgspec.Meta(pattern="^float(16|32)$")] = "float32"

    def __post_init__(self) -> None:
        if self.layer_end <= self.layer_start:
            raise ValueError("empty layer range")


@codec.register
class SessionOpened(codec.Message, frozen=True):
    TYPE_ID = 62
    MAX_SIZE = 256

    layer_start: Layer
    layer_end: Layer
    has_head: bool
    max_tokens: Count
    #: What each row through each layer costs (0: free), and whom to pay; the advert says the same.
    price_wei_per_token_layer: Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)] = 0
    payee: Annotated[str, msgspec.Meta(pattern=r"^(0x[0-9a-fA-F]{40})?$")] = ""


@codec.register
class Forward(codec.Message, frozen=True):
    """Run rows at positions [start_pos, start_pos + n). Exactly one of ``tokens`` / ``hidden`` is set.

    ``hidden`` is a `protocol.hidden` message. ``last_only`` asks the head hop for the last row's logits only.
    ``voucher`` (a `protocol.voucher.Voucher` in its wire form, or empty) pays for this step.
    """

    TYPE_ID = 63
    MAX_SIZE = MAX_SEALED

    start_pos: Count
    tokens: Annotated[tuple[Count, ...], msgspec.Meta(max_length=MAX_ROWS)] = ()
    hidden: bytes = b""
    last_only: bool = True
    voucher: Annotated[bytes, msgspec.Meta(max_length=VOUCHER_WIRE_SIZE)] = b""

    def __post_init__(self) -> None:
        if bool(self.tokens) == bool(self.hidden):
            raise ValueError("a Forward carries either tokens or hidden states")


@codec.register
class ForwardResult(codec.Message, frozen=True):
    """``output`` is a `protocol.hidden` message: hidden rows, or logits rows from the head hop."""

    TYPE_ID = 64
    MAX_SIZE = MAX_SEALED

    output: bytes
    is_logits: bool
    compute_us: Count


@codec.register
class CloseSession(codec.Message, frozen=True):
    TYPE_ID = 65
    MAX_SIZE = 16


@codec.register
class InferError(codec.Message, frozen=True):
    TYPE_ID = 66
    MAX_SIZE = 1024

    code: Code
    message: Annotated[str, msgspec.Meta(max_length=512)] = ""


CLIENT_MESSAGES: tuple[type[codec.Message], ...] = (OpenSession, Forward, CloseSession)
HOP_MESSAGES: tuple[type[codec.Message], ...] = (SessionOpened, ForwardResult, InferError)


def encode_inner(msg: codec.Message) -> bytes:
    return codec.encode_frame(msg)


def decode_inner_untrusted(data: bytes, allowed: tuple[type[codec.Message], ...]) -> codec.Message:
    """Decode the plaintext of a sealed frame. Raises `MalformedMessage`."""
    if len(data) > MAX_SEALED:
        raise MalformedMessage("sealed plaintext too large")
    return codec.decode_frame_untrusted(data, allowed=allowed)
