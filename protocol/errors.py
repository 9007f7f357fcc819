"""The project's exception tree. Every error Steppe raises on purpose derives from `SteppeError`."""

from __future__ import annotations


class SteppeError(Exception):
    """Root of every error raised on purpose by Steppe."""


class MalformedMessage(SteppeError):
    """Bytes from an untrusted source could not be decoded or failed a structural check.

    The only exception a `*_untrusted` function may raise. Always raised ``from`` the underlying cause.
    """


class InvalidSignature(MalformedMessage):
    """A signature does not verify against the key it claims."""


class InvalidAdvert(MalformedMessage):
    """A capability advert failed verification (signature, binding, time window, seq, size, version)."""


class StaleAdvert(InvalidAdvert):
    """An advert whose seq is not above the last one seen for that peer (a replay or an old copy)."""


class LateAdvert(InvalidAdvert):
    """An authentic advert that expired moments ago: delayed on its way (a slow hop, a stalled receiver),
    which an honest relay can cause; distinct from an advert long expired (a replay of an old copy)."""


class SealError(MalformedMessage):
    """A sealed payload could not be opened. Subclasses say why."""


class TruncatedPayload(SealError):
    """The sealed payload is shorter than its header or its authentication tag."""


class WrongRecipient(SealError):
    """The sealed payload was sealed to another key."""


class TamperedPayload(SealError):
    """Authentication failed: the ciphertext, the associated data or the nonce was changed."""


class ReplayedMessage(SealError):
    """A sequence number at or below one already accepted: a replay."""


class OutOfOrderMessage(SealError):
    """A sequence number ahead of the next expected one: reordered or dropped messages."""


class KeyFileError(SteppeError):
    """A key file is missing, unreadable, corrupt or has unsafe permissions. The message says what to do."""


class ConfigError(SteppeError):
    """A configuration value (file, environment or flag) is invalid. The message names it and says why."""
