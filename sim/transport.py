"""A libp2p transport over `sim.net`: py-libp2p's TCP transport with its byte pipes replaced.

`SimTransport` subclasses libp2p's ``TCP`` and keeps what it does with addresses (``can_dial``,
``can_listen``, DNS resolution in ``dial``, parsing ``/ip4/…/tcp/…``); only the step that opens a socket
is swapped for `SimNetwork.connect`. Everything above it — multistream-select, Noise, Yamux, Identify,
GossipSub, Kad-DHT — is libp2p's own code. One transport instance belongs to one simulated node (its
address); give it to a host builder in place of ``TCP()``.
"""

from __future__ import annotations

import trio
from libp2p.abc import IListener, IRawConnection
from libp2p.custom_types import THandler
from libp2p.io.abc import ReadWriteCloser
from libp2p.io.exceptions import ConnectionClosedError
from libp2p.network.connection.raw_connection import RawConnection
from libp2p.transport.exceptions import OpenConnectionError
from libp2p.transport.tcp.tcp import TCP
from libp2p.utils.multiaddr_utils import extract_ip_from_multiaddr
from multiaddr import Multiaddr
from multiaddr.exceptions import ProtocolLookupError

from .net import SimNetwork
from .pipe import ConnectionReset, SimStream

#: Bytes a read takes from the simulated socket at most, the rest kept for the next reads.
READ_AHEAD = 65536


class SimReadWriteCloser(ReadWriteCloser):
    """libp2p's view of a `SimStream`, with the error mapping of libp2p's own TCP stream wrapper:
    a reset raises ``ConnectionClosedError``; EOF and reads after a local close return ``b""``.

    Reads are buffered: one read takes everything that has arrived (up to `READ_AHEAD`) and the next reads
    are served from it without a trip through the scheduler. Noise reads each message as a 2-byte length
    and then the body, so unbuffered each message cost two socket reads and two scheduler turns."""

    def __init__(self, stream: SimStream) -> None:
        self.stream = stream
        self._ahead, self._at = b"", 0  # received bytes; those before `_at` were read

    async def write(self, data: bytes) -> None:
        try:
            await self.stream.send(data)
        except ConnectionReset as exc:
            raise ConnectionClosedError(str(exc), transport="sim") from exc

    async def read(self, n: int | None = None) -> bytes:
        if n == 0:
            return b""
        ahead, at = self._ahead, self._at
        if at >= len(ahead) or self.stream.closed or self.stream.conn.reset:
            # (bytes read ahead are gone with a local close or a reset, as unread ones are)
            try:
                ahead, at = await self.stream.receive(max(n or 0, READ_AHEAD)), 0
            except ConnectionReset as exc:
                raise ConnectionClosedError(str(exc), transport="sim") from exc
        end = len(ahead) if n is None else min(len(ahead), at + n)
        self._ahead, self._at = ahead, end
        return ahead if at == 0 and end == len(ahead) else ahead[at:end]

    async def close(self) -> None:
        await self.stream.aclose()

    def get_remote_address(self) -> tuple[str, int] | None:
        return self.stream.remote


def _ip_port(maddr: Multiaddr) -> tuple[str, int]:
    ip = extract_ip_from_multiaddr(maddr)
    try:
        port = maddr.value_for_protocol("tcp")
    except ProtocolLookupError as exc:
        raise OpenConnectionError(f"no TCP port in {maddr}") from exc
    if ip is None or port is None:
        raise OpenConnectionError(f"no IP address or TCP port in {maddr}")
    try:
        return ip, int(port)
    except ValueError as exc:
        raise OpenConnectionError(f"bad TCP port in {maddr}") from exc


class SimListener(IListener):
    """Listens on the node's simulated address. Inbound connections run ``handler`` in the swarm's
    background nursery (the swarm sets ``background_nursery``, as it does for every listener) or in
    ``nursery`` when given; a handler's exception is swallowed, as libp2p's TCP listener does."""

    def __init__(
        self, net: SimNetwork, ip: str, handler: THandler, nursery: trio.Nursery | None = None
    ) -> None:
        self.net = net
        self.ip = ip
        self.handler = handler
        self.background_nursery = nursery
        self.ports: list[int] = []
        self._closed = False

    async def listen(self, maddr: Multiaddr) -> None:
        """Raises ``OpenConnectionError`` for an address that is not this node's, a taken port, a
        crashed node or a closed listener."""
        ip, port = _ip_port(maddr)
        if ip not in (self.ip, "0.0.0.0"):
            raise OpenConnectionError(f"cannot listen on {maddr}: this node is {self.ip}")
        if self._closed:
            raise OpenConnectionError(f"cannot listen on {maddr}: listener is closed")
        try:
            self.ports.append(self.net.listen(self.ip, port, self))
        except OSError as exc:
            raise OpenConnectionError(f"cannot listen on {maddr}: {exc}") from exc
        await trio.lowlevel.checkpoint()

    def accept(self, stream: SimStream) -> None:
        if self.background_nursery is None or self._closed:
            stream.conn.do_reset()
            return
        try:
            self.background_nursery.start_soon(self._serve, stream)
        except RuntimeError:  # the host is shutting down: its nursery takes no new tasks
            stream.conn.do_reset()

    async def _serve(self, stream: SimStream) -> None:
        try:
            await self.handler(SimReadWriteCloser(stream))
        except Exception:  # the swarm logs and cleans up; one bad inbound must not kill the node
            await stream.aclose()

    def get_addrs(self) -> tuple[Multiaddr, ...]:
        return tuple(Multiaddr(f"/ip4/{self.ip}/tcp/{port}") for port in self.ports)

    async def close(self) -> None:
        self._closed = True
        for port in self.ports:
            self.net.unlisten(self.ip, port, self)
        await trio.lowlevel.checkpoint()


class SimTransport(TCP):
    """libp2p's TCP transport for the simulated node at ``ip`` on ``net``."""

    def __init__(self, net: SimNetwork, ip: str) -> None:
        super().__init__()
        self.net = net
        self.ip = ip

    async def _dial_resolved(self, maddr: Multiaddr, source: tuple[str, int] | None = None) -> IRawConnection:
        """Raises ``OpenConnectionError`` when the address is unusable or the dial fails."""
        host, port = _ip_port(maddr)
        try:
            stream = await self.net.connect(self.ip, host, port)
        except OSError as exc:
            raise OpenConnectionError(f"failed to dial {maddr}: {exc}") from exc
        return RawConnection(SimReadWriteCloser(stream), True)

    def create_listener(self, handler_function: THandler) -> SimListener:
        return SimListener(self.net, self.ip, handler_function)
