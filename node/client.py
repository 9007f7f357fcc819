"""The client side of distributed generation: route, open sealed sessions, run steps hop by hop.

The client drives the chain: it sends each hop its input rows and gets the output rows back, so it holds
the hidden state entering every hop boundary for every position so far (``_Boundaries``). That history is
what makes failover exact: when a hop dies or stalls, the client bans it with backoff, routes the same span
over other peers, replays the history through them to rebuild their caches, and carries on — greedy output
is the same as without the failure. Spot checks re-run one hop's span on a second provider (replaying the
history there), compare within a dtype-aware tolerance and, on disagreement, ask a third to decide.
"""

from __future__ import annotations

import os
import random
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field

import numpy as np
import trio

from node.inference.sampling import Sampler
from node.ledger.sender import PaymentSender
from node.logging import get_logger
from node.p2p.host import ID
from node.p2p.streams import FramedStream, RemoteError, StreamError, StreamProtocol, open_stream
from node.serving import infer_protocol
from protocol import infer
from protocol.advert import ModelRef, SignedAdvert
from protocol.errors import MalformedMessage, SteppeError
from protocol.hidden import decode_hidden_untrusted, encode_hidden
from protocol.identity import ed25519_of_peer_id_untrusted, x25519_of_ed25519_public
from protocol.route import Avoid, Candidate, Hop, NoRoute, RouteParams, choose_checker, route_span
from protocol.seal import Opener, Sealer, generate_keypair

log = get_logger("steppe.client")

#: Hidden rows bigger than this are split into several Forward messages during a replay.
_REPLAY_ROWS = 256


class HopFailed(SteppeError):
    """A hop could not serve a step: unreachable, stalled, reset, busy or answered garbage."""

    def __init__(self, peer_id: str, reason: str, *, busy: bool = False) -> None:
        super().__init__(f"hop {peer_id[-8:]} failed: {reason}")
        self.peer_id = peer_id
        self.busy = busy


class Bans:
    """Peers to avoid, each for a backoff that doubles with every offence (capped)."""

    def __init__(self, base_s: float = 30.0, cap_s: float = 3600.0) -> None:
        self.base_s, self.cap_s = base_s, cap_s
        self._until: dict[str, float] = {}
        self._count: dict[str, int] = {}

    def ban(self, peer_id: str, now: float) -> float:
        n = self._count[peer_id] = self._count.get(peer_id, 0) + 1
        duration = min(self.base_s * 2 ** (n - 1), self.cap_s)
        self._until[peer_id] = now + duration
        return duration

    def banned(self, now: float) -> set[str]:
        return {p for p, t in self._until.items() if t > now}


@dataclass
class HopStats:
    peer_id: str
    span: tuple[int, int]
    steps: int = 0
    wall_s: float = 0.0
    compute_s: float = 0.0
    paid_wei: int = 0

    def as_dict(self) -> dict:
        return {
            "peer_id": self.peer_id,
            "paid_wei": self.paid_wei,
            "layers": f"{self.span[0]}:{self.span[1]}",
            "steps": self.steps,
            "avg_ms": round(1000 * self.wall_s / max(self.steps, 1), 2),
            "overhead_ms": round(1000 * (self.wall_s - self.compute_s) / max(self.steps, 1), 2),
        }


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    new_tokens: int = 0
    wall_s: float = 0.0
    first_token_s: float = 0.0
    routes: list[str] = field(default_factory=list)
    failovers: int = 0
    spot_checks: int = 0
    spot_check_s: float = 0.0
    spot_check_rows: int = 0
    spot_checks_skipped: int = 0
    liars: list[str] = field(default_factory=list)
    hops: list[HopStats] = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float:
        decode_s = self.wall_s - self.first_token_s
        return (self.new_tokens - 1) / decode_s if self.new_tokens > 1 and decode_s > 0 else 0.0

    def as_dict(self) -> dict:
        return {
            "prompt_tokens": self.prompt_tokens,
            "new_tokens": self.new_tokens,
            "wall_s": round(self.wall_s, 3),
            "time_to_first_token_s": round(self.first_token_s, 3),
            "tokens_per_s": round(self.tokens_per_s, 2),
            "routes": self.routes,
            "failovers": self.failovers,
            "spot_checks": {
                "run": self.spot_checks,
                "skipped_no_provider": self.spot_checks_skipped,
                "seconds": round(self.spot_check_s, 3),
                "rows_recomputed": self.spot_check_rows,
                "cost_fraction": round(self.spot_check_s / self.wall_s, 4) if self.wall_s else 0.0,
                "liars": self.liars,
            },
            "paid_wei": sum(h.paid_wei for h in self.hops),
            "hops": [h.as_dict() for h in self.hops],
        }


class HopSession:
    """One sealed session with one hop over one stream. Use `open_hop`."""

    def __init__(
        self, stream: FramedStream, hop: Hop, session: bytes, sealer: Sealer, opener: Opener
    ) -> None:
        self.stream, self.hop, self.session = stream, hop, session
        self._sealer, self._opener = sealer, opener
        self.has_head = False
        self.stats = HopStats(hop.peer_id, (hop.start, hop.end))
        self.price_per_row = 0  # wei per row through all of this hop's layers
        self.payee = ""
        self.payer: PaymentSender | None = None
        self.stop_paying_after: int | None = None  # free-rider mode (tests, simulator)
        self.paid_steps = 0

    async def _call(self, msg) -> infer.ForwardResult | infer.SessionOpened:
        try:
            await self.stream.send(infer.InferFrame(self.session, self._sealer.seal(infer.encode_inner(msg))))
            frame = await self.stream.expect(infer.InferFrame)
            assert isinstance(frame, infer.InferFrame)
            reply = infer.decode_inner_untrusted(
                self._opener.open_untrusted(frame.sealed), infer.HOP_MESSAGES
            )
        except RemoteError as exc:
            raise HopFailed(self.hop.peer_id, str(exc), busy=exc.code == "busy") from exc
        except (StreamError, MalformedMessage) as exc:
            raise HopFailed(self.hop.peer_id, str(exc)) from exc
        if isinstance(reply, infer.InferError):
            raise HopFailed(self.hop.peer_id, f"{reply.code}: {reply.message}", busy=reply.code == "busy")
        return reply

    async def _voucher(self, rows: int) -> bytes:
        """A voucher paying for ``rows`` rows through this hop's layers (empty when free or not paying)."""
        cost = rows * self.price_per_row
        if cost == 0 or self.payer is None:
            return b""
        if self.stop_paying_after is not None and self.paid_steps >= self.stop_paying_after:
            return b""
        try:
            voucher = await self.payer.pay(self.payee, cost)
        except SteppeError as exc:  # LedgerError, TransactionReverted: we cannot pay this hop
            raise HopFailed(self.hop.peer_id, f"cannot pay: {exc}") from exc
        self.paid_steps += 1
        self.stats.paid_wei += cost
        return voucher.to_bytes()

    async def forward(
        self, start_pos: int, rows: np.ndarray, *, wire_dtype: str, last_only: bool = True
    ) -> np.ndarray:
        """Token ids (1-D int) or hidden rows in; hidden rows or logits out. Pays for the step when the hop
        charges. Raises `HopFailed`."""
        voucher = await self._voucher(int(rows.shape[0]))
        if rows.dtype.kind in "iu":
            tokens = tuple(int(t) for t in rows)
            msg = infer.Forward(start_pos, tokens=tokens, last_only=last_only, voucher=voucher)
        else:
            hidden = encode_hidden(rows, wire_dtype)
            msg = infer.Forward(start_pos, hidden=hidden, last_only=last_only, voucher=voucher)
        t0 = trio.current_time()
        reply = await self._call(msg)
        if not isinstance(reply, infer.ForwardResult):
            raise HopFailed(self.hop.peer_id, f"unexpected {type(reply).__name__}")
        try:
            out = decode_hidden_untrusted(reply.output, infer.MAX_SEALED)
        except MalformedMessage as exc:
            raise HopFailed(self.hop.peer_id, str(exc)) from exc
        expected_rows = 1 if (reply.is_logits and last_only) else rows.shape[0]
        if out.shape[0] != expected_rows:
            raise HopFailed(self.hop.peer_id, f"answered {out.shape[0]} rows for {expected_rows}")
        self.has_head = reply.is_logits
        self.stats.steps += 1
        self.stats.wall_s += trio.current_time() - t0
        self.stats.compute_s += reply.compute_us / 1e6
        return out


async def start_hop_session(
    stream: FramedStream,
    hop: Hop,
    model: ModelRef,
    max_tokens: int,
    wire_dtype: str,
    *,
    advert: SignedAdvert | None = None,
    payer: PaymentSender | None = None,
) -> HopSession:
    """Open a sealed session with ``hop`` on an open ``stream``; the hop must charge no more than its
    ``advert`` says, to the address the advert names. Raises `HopFailed`."""
    try:
        hop_key = x25519_of_ed25519_public(ed25519_of_peer_id_untrusted(hop.peer_id))
    except MalformedMessage as exc:
        raise HopFailed(hop.peer_id, str(exc)) from exc
    session = os.urandom(infer.SESSION_ID_SIZE)
    reply_pk, reply_sk = generate_keypair()
    hs = HopSession(
        stream,
        hop,
        session,
        Sealer(hop_key, protocol=infer.PROTOCOL_ID, session_id=session),
        Opener(reply_sk, reply_pk, protocol=infer.PROTOCOL_ID, session_id=session),
    )
    opened = await hs._call(
        infer.OpenSession(model.sha256, hop.start, hop.end, max_tokens, reply_pk, wire_dtype=wire_dtype)
    )
    if not isinstance(opened, infer.SessionOpened) or (opened.layer_start, opened.layer_end) != (
        hop.start,
        hop.end,
    ):
        raise HopFailed(hop.peer_id, "session opened for other layers")
    hs.has_head = opened.has_head
    if advert is not None and (
        opened.price_wei_per_token_layer > advert.body.price_wei_per_token_layer
        or (opened.price_wei_per_token_layer and opened.payee.lower() != advert.body.payment_address.lower())
    ):
        raise HopFailed(hop.peer_id, "the session's price or payee differs from the advert")
    hs.price_per_row = opened.price_wei_per_token_layer * (hop.end - hop.start)
    hs.payee = opened.payee
    hs.payer = payer
    return hs


async def open_hop(
    stack: AsyncExitStack,
    host,
    proto: StreamProtocol,
    hop: Hop,
    model: ModelRef,
    max_tokens: int,
    wire_dtype: str,
    *,
    advert: SignedAdvert | None = None,
    payer: PaymentSender | None = None,
) -> HopSession:
    """A new stream to ``hop`` and a sealed session on it; both closed with ``stack``. Raises `HopFailed`."""
    try:
        stream = await stack.enter_async_context(open_stream(host, ID.from_base58(hop.peer_id), proto))
    except StreamError as exc:
        raise HopFailed(hop.peer_id, str(exc)) from exc
    return await start_hop_session(stream, hop, model, max_tokens, wire_dtype, advert=advert, payer=payer)


@dataclass
class ClientSettings:
    wire_dtype: str = "float32"
    spot_check_p: float = 0.05
    #: Providers asked to re-run a provider's first step (a random later check asks one). Two: providers
    #: that lie alike cannot pass a first check by drawing one of their own as the only checker.
    first_checkers: int = 2
    #: The most providers asked to settle one check whose answers disagree.
    max_checkers: int = 6
    step_timeout_s: float = 20.0
    route: RouteParams = field(default_factory=lambda: RouteParams(whole_ranges=True))
    max_failovers: int = 8
    seed: int | None = None
    #: Tests and the simulator only: stop paying after this many paid steps (a free-rider).
    stop_paying_after: int | None = None


class _Boundaries:
    """Rows entering each layer boundary, for every position so far (layer 0: the token ids)."""

    def __init__(self) -> None:
        self.rows: dict[int, np.ndarray] = {}

    def add(self, layer: int, rows: np.ndarray) -> None:
        old = self.rows.get(layer)
        self.rows[layer] = rows.copy() if old is None else np.concatenate([old, rows])

    def upto(self, layer: int, n: int) -> np.ndarray:
        return self.rows[layer][:n]


class Client:
    """Runs generations for one model over the peers that ``adverts()`` returns.

    ``latency_ms(peer_id)`` gives a measured round trip or None. Owns no task: each `generate` call opens
    its sessions in its own exit stack and closes them when it ends or is cancelled.
    """

    def __init__(
        self,
        host,
        model: ModelRef,
        adverts: Callable[[], Iterable[SignedAdvert]],
        *,
        latency_ms: Callable[[str], float | None] = lambda _p: None,
        settings: ClientSettings | None = None,
        bans: Bans | None = None,
        payer: PaymentSender | None = None,
    ) -> None:
        self.host, self.model, self._adverts, self._latency = host, model, adverts, latency_ms
        self.payer = payer
        self.settings = settings or ClientSettings()
        self.bans = bans or Bans()
        self.proto = infer_protocol(self.settings.step_timeout_s, self.settings.step_timeout_s)
        self._rng = random.Random(self.settings.seed)
        #: Providers whose first step for this client was spot-checked (see `_Run.step`).
        self.first_checked: set[str] = set()

    def _payable(self, advert: SignedAdvert) -> bool:
        """Free, or priced on the chain and contract our payer pays through."""
        body = advert.body
        if body.price_wei_per_token_layer == 0:
            return True
        p = self.payer
        return (
            p is not None
            and body.chain_id == p.client.ledger.chain_id
            and body.contract.lower() == p.client.contract.lower()
        )

    def candidates(self) -> tuple[list[Candidate], dict[str, SignedAdvert]]:
        """Serving peers of our model that we can pay, with their adverts."""
        adverts = {
            a.peer_id: a
            for a in self._adverts()
            if a.body.model is not None
            and a.body.model.sha256 == self.model.sha256
            and a.body.layer_end > a.body.layer_start
            and self._payable(a)
        }
        return [Candidate.from_advert(a, self._latency(p)) for p, a in adverts.items()], adverts

    def route(self, start: int, end: int, max_tokens: int, avoid: Iterable[Avoid] = ()) -> list[Hop]:
        """Raises `NoRoute` ("no route for layers A:B …")."""
        cands, _ = self.candidates()
        return list(
            route_span(
                cands,
                start,
                end,
                max_tokens=max_tokens,
                params=self.settings.route,
                banned=self.bans.banned(trio.current_time()),
                avoid=avoid,
            ).hops
        )

    async def generate(
        self, prompt: list[int], max_new_tokens: int, sampler: Sampler, stats: GenerationStats | None = None
    ) -> AsyncIterator[int]:
        """Yield new token ids until ``max_new_tokens`` or a stop token. Raises `NoRoute`, `HopFailed`."""
        if not prompt:
            raise ValueError("the prompt must have at least one token")
        stats = stats if stats is not None else GenerationStats()
        stats.prompt_tokens = len(prompt)
        run = _Run(self, len(prompt) + max_new_tokens, stats)
        t0 = trio.current_time()
        async with AsyncExitStack() as stack:
            run.stack = stack
            try:
                await run.open(self.route(0, self.model.num_layers, run.max_tokens))
                history = list(prompt)
                logits = await run.step(np.asarray(prompt, np.int32), 0)
                stats.first_token_s = trio.current_time() - t0
                for _ in range(max_new_tokens):
                    tok = sampler(logits[-1], history)
                    if sampler.is_stop(tok):
                        break
                    stats.new_tokens += 1
                    stats.wall_s = trio.current_time() - t0
                    yield tok
                    history.append(tok)
                    if len(history) >= run.max_tokens:
                        break
                    logits = await run.step(np.asarray([tok], np.int32), len(history) - 1)
            finally:
                # Also when the consumer stops early (a stop string) or a hop failure ends the generation.
                stats.wall_s = trio.current_time() - t0
                stats.hops = [h.stats for h in run.retired + run.chain]


class _Run:
    """State of one generation: the chain of open hop sessions and the boundary history."""

    def __init__(self, client: Client, max_tokens: int, stats: GenerationStats) -> None:
        self.c, self.max_tokens, self.stats = client, max_tokens, stats
        self.chain: list[HopSession] = []
        self.retired: list[HopSession] = []
        self.bounds = _Boundaries()
        self.stack: AsyncExitStack
        self.failures = 0

    def _describe(self) -> str:
        return " => ".join(f"{h.hop.start}:{h.hop.end}@{h.hop.peer_id[-6:]}" for h in self.chain)

    async def _open(self, hops: list[Hop], stack: AsyncExitStack | None = None) -> list[HopSession]:
        _, adverts = self.c.candidates()
        sessions = [
            await open_hop(
                stack or self.stack,
                self.c.host,
                self.c.proto,
                hop,
                self.c.model,
                self.max_tokens,
                self.c.settings.wire_dtype,
                advert=adverts.get(hop.peer_id),
                payer=self.c.payer,
            )
            for hop in hops
        ]
        for hs in sessions:
            hs.stop_paying_after = self.c.settings.stop_paying_after
        return sessions

    async def open(self, hops: list[Hop]) -> None:
        while True:
            try:
                self.chain = await self._open(hops)
                break
            except HopFailed as exc:
                self._ban(exc)
                hops = self.c.route(0, self.c.model.num_layers, self.max_tokens)
        self.stats.routes.append(self._describe())

    def _ban(self, exc: HopFailed) -> None:
        self.failures += 1
        if self.failures > self.c.settings.max_failovers:
            raise exc
        duration = self.c.bans.ban(exc.peer_id, trio.current_time())
        log.warning("hop_banned", peer_id=exc.peer_id, reason=str(exc)[:200], ban_s=duration)

    async def step(self, rows: np.ndarray, pos: int) -> np.ndarray:
        """Run ``rows`` (positions [pos, pos+n)) through the whole chain; returns the last hop's logits."""
        upto = pos + rows.shape[0]
        i, x = 0, rows
        while i < len(self.chain):
            hs = self.chain[i]
            self.bounds.add(hs.hop.start, x)
            try:
                out = await hs.forward(pos, x, wire_dtype=self.c.settings.wire_dtype)
            except HopFailed as exc:
                self._ban(exc)
                i, out = await self._replace(i, pos, upto)
            p = self.c.settings.spot_check_p
            drawn = p > 0 and self.c._rng.random() < p
            # A provider's first step for this client is always checked: a provider that lies on every
            # step is then caught before any token comes from its output (with random checks alone, the
            # tokens sampled before the catch stay wrong). Later steps are checked with probability p. A
            # provider that replaced a caught liar is new too: its output is checked before it is used.
            # A first check that could not run (no other provider known yet, or the checker failed) is
            # tried again on the provider's next step instead of counting as done.
            tried: set[str] = set()
            while p > 0:
                peer = self.chain[i].hop.peer_id
                if not drawn and (peer in self.c.first_checked or peer in tried):
                    break
                drawn = False
                tried.add(peer)
                skipped = self.stats.spot_checks_skipped
                first = peer not in self.c.first_checked
                checkers = self.c.settings.first_checkers if first else 1
                i, out = await self._spot_check(i, pos, upto, out, checkers=max(1, checkers))
                if self.stats.spot_checks_skipped == skipped and peer not in self.stats.liars:
                    self.c.first_checked.add(peer)
            x = out
            i += 1
        return x

    async def _replace(self, i: int, pos: int, upto: int) -> tuple[int, np.ndarray]:
        """Replace chain[i] by a new route over its span and replay rows [0, upto) through it.

        Returns the index of the last new hop and its output for rows [pos, upto). Raises `NoRoute` (no
        other provider) or the last `HopFailed` after ``max_failovers``.
        """
        old = self.chain[i]
        start, end = old.hop.start, old.hop.end
        while True:
            hops = self.c.route(start, end, self.max_tokens, avoid=[Avoid(old.hop.peer_id, start, end)])
            try:
                new = await self._open(hops)
                out = await self._replay(new, pos, upto, record=True)
                break
            except HopFailed as exc:
                self._ban(exc)
        self.retired.append(old)
        self.chain[i : i + 1] = new
        self.stats.failovers += 1
        self.stats.routes.append(self._describe())
        log.info("hop_replaced", layers=f"{start}:{end}", by=[h.peer_id for h in hops])
        return i + len(new) - 1, out

    async def _replay(self, sessions: list[HopSession], pos: int, upto: int, *, record: bool) -> np.ndarray:
        """Feed the rows [0, upto) entering ``sessions[0]`` through all of them (rebuilding their caches);
        return the last session's output for rows [pos, upto) (one row of logits for a head)."""
        x = self.bounds.upto(sessions[0].hop.start, upto)
        for k, hs in enumerate(sessions):
            if k > 0 and record:
                self.bounds.rows[hs.hop.start] = x.copy()
            outs = [
                await hs.forward(a, x[a : min(a + _REPLAY_ROWS, upto)], wire_dtype=self.c.settings.wire_dtype)
                for a in range(0, upto, _REPLAY_ROWS)
            ]
            x = outs[-1] if hs.has_head else np.concatenate(outs)
        return x if sessions[-1].has_head else x[pos:upto]

    async def _check_on(
        self, peer_ids: list[str], i: int, pos: int, upto: int
    ) -> tuple[str, np.ndarray] | None:
        """Re-run chain[i]'s span on one provider that is none of ``peer_ids``; None if there is none."""
        hop = self.chain[i].hop
        cands, _ = self.c.candidates()
        try:
            route = choose_checker(
                cands,
                hop.start,
                hop.end,
                served_by=peer_ids,
                max_tokens=self.max_tokens,
                params=self.c.settings.route,
                banned=self.c.bans.banned(trio.current_time()),
                rng=self.c._rng,  # an unpredictable checker: liars cannot arrange to check each other
            )
        except NoRoute:
            return None
        async with AsyncExitStack() as stack:
            try:
                sessions = await self._open(list(route.hops), stack)
                out = await self._replay(sessions, pos, upto, record=False)
            except HopFailed as exc:
                log.info("spot_check_provider_failed", peer_id=exc.peer_id, error=str(exc)[:200])
                return None
        self.stats.spot_check_rows += upto
        self.retired.extend(sessions)  # their steps and payments count in the generation's stats
        return route.hops[0].peer_id, out

    def _agree(self, a: np.ndarray, b: np.ndarray) -> bool:
        if a.shape != b.shape:
            return False
        tol = 2e-2 if self.c.settings.wire_dtype == "float16" else 1e-3
        return bool(np.max(np.abs(a - b)) <= tol * (1.0 + float(np.max(np.abs(b)))))

    async def _spot_check(
        self, i: int, pos: int, upto: int, out: np.ndarray, *, checkers: int = 1
    ) -> tuple[int, np.ndarray]:
        """Compare chain[i]'s output with ``checkers`` other providers'; when the answers disagree, ask more.

        Answers are grouped by agreement. All in one group: the output stands. Otherwise the largest group
        decides once it leads every other by two answers, or by one when no further provider can be asked
        (two liars that lie alike, one checking the other, then face a majority of honest providers rather
        than a lone one); providers outside it are banned as liars, and the primary, if it is one of them,
        is replaced. No strict majority (say one checker, which disagrees, and no third provider): nobody is
        banned, and the primary's output stands unless another answer had more support (it is replaced).
        """
        t0 = trio.current_time()
        primary = self.chain[i].hop.peer_id
        groups: list[tuple[np.ndarray, list[str]]] = [(out, [primary])]
        asked = [primary]
        wanted, limit = checkers, max(checkers, self.c.settings.max_checkers)
        try:
            exhausted = False
            while True:
                while len(asked) - 1 < wanted and not exhausted:
                    got = await self._check_on(asked, i, pos, upto)
                    if got is None:
                        exhausted = True
                        break
                    asked.append(got[0])
                    for rep, members in groups:
                        if self._agree(rep, got[1]):
                            members.append(got[0])
                            break
                    else:
                        groups.append((got[1], [got[0]]))
                if len(asked) == 1:
                    self.stats.spot_checks_skipped += 1
                    return i, out
                if len(groups) == 1:
                    break
                sizes = sorted((len(m) for _, m in groups), reverse=True)
                lead = sizes[0] - sizes[1]
                if lead >= 2 or exhausted or len(asked) - 1 >= limit:
                    break
                wanted += 1
            self.stats.spot_checks += 1
            if len(groups) == 1:
                return i, out
            groups.sort(key=lambda g: len(g[1]), reverse=True)
            sizes = [len(m) for _, m in groups]
            span = f"{self.chain[i].hop.start}:{self.chain[i].hop.end}"
            if sizes[0] == sizes[1]:
                # No majority: the primary's output stands unless another answer has more support.
                log.warning("spot_check_undecided", primary=primary, answers=[m for _, m in groups])
                if any(primary in m for _, m in groups if len(m) == sizes[0]):
                    return i, out
                return await self._replace(i, pos, upto)
            for _, members in groups[1:]:
                for liar in members:
                    self.stats.liars.append(liar)
                    self.c.bans.ban(liar, trio.current_time())
                    self.c.first_checked.discard(liar)  # once its ban ends, its first step is checked again
                    log.warning("provider_lied", peer_id=liar, layers=span, majority=len(groups[0][1]))
            if primary not in groups[0][1]:
                return await self._replace(i, pos, upto)
            return i, out
        finally:
            self.stats.spot_check_s += trio.current_time() - t0
