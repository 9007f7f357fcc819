"""Kad-DHT discovery: server mode, strict validation, provider records per (model sha256, block).

The library neither adds connected peers to its routing table nor removes duplicate providers; this module
does both. With strict validation, values are accepted only in the ``steppe-advert`` namespace, whose
validator runs full advert verification. Adverts travel by gossip and by `ADVERT_PROTOCOL` (a newcomer
fetches them from the providers it finds), not as DHT values: 0.8.1's PUT_VALUE path looks up non-PeerID
keys with FIND_NODE, which its own servers ignore.
"""

from __future__ import annotations

import hashlib
import struct

import trio
from libp2p.abc import IHost
from libp2p.kad_dht import kad_dht as _kad_dht
from libp2p.kad_dht import peer_routing as _peer_routing
from libp2p.kad_dht import provider_store as _provider_store
from libp2p.kad_dht.kad_dht import DHTMode, KadDHT, _encode_key
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.records.validator import NamespacedValidator, Validator
from libp2p.tools.anyio_service import background_trio_service

from node.logging import get_logger
from node.p2p.clock import Clock
from protocol.advert import decode_advert_untrusted, verify_advert
from protocol.errors import MalformedMessage

#: Layers per provider block: a node serving layers [s, e) provides every block that range touches.
BLOCK_LAYERS = 8
ADVERT_NAMESPACE = "steppe-advert"
#: How long the library waits for one DHT peer's answer (its default is 10 s). Its lookups go in lock-step
#: rounds that wait for the slowest peer of each, so one peer that never answers used to cost a whole
#: 10 s lookup budget; answers take ~0.4 s (p99 ~3 s) on 50 ms links under churn.
DHT_QUERY_TIMEOUT_S = 4.0
#: Concurrent provider queries, and how long one may take, when we look past our local provider records.
LOOKUP_ALPHA = 5
PROVIDER_QUERY_TIMEOUT_S = DHT_QUERY_TIMEOUT_S
#: A node that holds provider records (as a record keeper, or cached from an earlier lookup) answers from
#: them alone; with fewer providers than this there it also asks the network, since a few cached records
#: may all be of providers that have left.
MIN_LOCAL_PROVIDERS = 3
for _module in (_kad_dht, _peer_routing, _provider_store):
    _module.QUERY_TIMEOUT = DHT_QUERY_TIMEOUT_S  # type: ignore[attr-defined]
_PROVIDER_DOMAIN = b"steppe/provider/v1\x00"

log = get_logger("steppe.p2p.discovery")


def provider_key(model_sha256: bytes, block: int) -> str:
    """The DHT key (hex sha2-256 multihash) under which providers of ``block`` of a model are recorded."""
    digest = hashlib.sha256(_PROVIDER_DOMAIN + model_sha256 + struct.pack(">I", block)).digest()
    return "1220" + digest.hex()


def blocks_of(layer_start: int, layer_end: int) -> range:
    if layer_end <= layer_start:
        return range(0)
    return range(layer_start // BLOCK_LAYERS, (layer_end - 1) // BLOCK_LAYERS + 1)


def advert_value_key(peer_id: str) -> str:
    return f"/{ADVERT_NAMESPACE}/{peer_id}"


class AdvertRecordValidator(Validator):
    """DHT values under ``/steppe-advert/<PeerID>``: a valid advert of that very peer; newest seq wins."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock

    def validate(self, key: str, value: bytes) -> None:
        try:
            advert = decode_advert_untrusted(value)
            verify_advert(advert, self.clock.now_ms())
        except MalformedMessage as exc:
            raise ValueError(f"invalid advert record: {exc}") from exc
        if key != advert_value_key(advert.peer_id):
            raise ValueError("advert record stored under another peer's key")

    def select(self, key: str, values: list[bytes]) -> int:
        best, best_seq = 0, -1
        for i, value in enumerate(values):
            try:
                self.validate(key, value)
                seq = decode_advert_untrusted(value).seq
            except ValueError:
                continue
            if seq > best_seq:
                best, best_seq = i, seq
        return best


class Discovery:
    """Owns the KadDHT. Add connected peers to the routing table; provide and find model blocks."""

    def __init__(self, host: IHost, clock: Clock) -> None:
        self.host = host
        self.clock = clock
        validator = NamespacedValidator(
            {ADVERT_NAMESPACE: AdvertRecordValidator(clock)}, strict_validation=True
        )
        self.dht = KadDHT(
            host, DHTMode.SERVER, validator=validator, validator_changed=True, strict_validation=True
        )

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with background_trio_service(self.dht):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._populate)
                task_status.started()
                await trio.sleep_forever()

    async def _populate(self) -> None:
        """Every second, add connected peers that speak Kad (known after identify) to the routing table."""
        known: set[ID] = set()
        while True:
            connected = set(self.host.get_connected_peers())
            for peer in connected - known:
                try:
                    # Before identify has run the library adds any peer, client-mode ones included; wait.
                    if not self.host.get_peerstore().get_protocols(peer):
                        continue
                    if await self.dht.add_peer(peer):
                        known.add(peer)
                except Exception as exc:  # identify may not have finished; retried next round
                    log.debug("dht_add_peer_failed", peer_id=str(peer), error=repr(exc))
            known &= connected
            await trio.sleep(1)

    def routing_table_size(self) -> int:
        return self.dht.get_routing_table_size()

    async def provide(self, model_sha256: bytes, layer_start: int, layer_end: int) -> int:
        """Announce the blocks of ``[layer_start, layer_end)``; returns how many announcements succeeded."""
        done = 0
        for block in blocks_of(layer_start, layer_end):
            try:
                if await self.dht.provide(provider_key(model_sha256, block)):
                    done += 1
            except Exception as exc:  # no peers yet, or a peer failed mid-query: retried on republish
                log.debug("dht_provide_failed", block=block, error=repr(exc))
        return done

    async def find_providers(self, model_sha256: bytes, block: int, count: int = 20) -> list[PeerInfo]:
        """Providers of one block, without duplicates (addresses of duplicates merged), ourselves excluded."""
        key = provider_key(model_sha256, block)
        me = self.host.get_id()
        try:
            local = self.dht.provider_store.get_providers(_encode_key(key))
            others = {p.peer_id for p in local} - {me}
            if local and len(others) < MIN_LOCAL_PROVIDERS:
                # The library answers from the local store whenever it holds a record: a provider, which
                # holds its own, would never learn of the others serving the same block, and a node with a
                # few cached records would keep answering with them after those providers left.
                found = [*local, *await self._providers_from_network(_encode_key(key), count)]
            else:
                found = await self.dht.find_providers(key, count)
        except Exception as exc:  # a failed lookup is an empty answer; the caller retries
            log.info("dht_find_providers_failed", block=block, error=repr(exc))
            return []
        merged: dict[ID, list] = {}
        for info in found:
            if info.peer_id == self.host.get_id():
                continue
            addrs = merged.setdefault(info.peer_id, [])
            addrs.extend(a for a in info.addrs if a not in addrs)
        return [PeerInfo(pid, addrs) for pid, addrs in merged.items()]

    async def _providers_from_network(self, key: bytes, count: int) -> list[PeerInfo]:
        """Ask the peers closest to ``key`` (where provider records are kept) for its providers."""
        store = self.dht.provider_store
        closest = [
            p for p in await store.peer_routing.find_closest_peers_network(key) if p != self.host.get_id()
        ]
        found: list[PeerInfo] = []

        async def ask(peer_id: ID) -> None:
            with trio.move_on_after(PROVIDER_QUERY_TIMEOUT_S):
                try:
                    providers, _closer = await store._get_providers_from_peer_with_closers(peer_id, key)
                except Exception as exc:  # one peer's failure is not the lookup's
                    log.debug("dht_provider_query_failed", peer_id=str(peer_id), error=repr(exc)[:200])
                    return
                found.extend(providers)

        for i in range(0, len(closest), LOOKUP_ALPHA):
            async with trio.open_nursery() as nursery:
                for peer_id in closest[i : i + LOOKUP_ALPHA]:
                    nursery.start_soon(ask, peer_id)
            if len({p.peer_id for p in found}) >= count:
                break
        return found
