"""The wiring function takes the simulator's parts: a transport instance and a clock."""

from __future__ import annotations

from libp2p.transport.tcp.tcp import TCP

from node.p2p.clock import TrioClock

from .p2p_driver import open_test_node, view_ids, wait_for

EPOCH_MS = 1_900_000_000_000


class CountingTCP(TCP):
    """Stands in for the simulator's transport: a TCP subclass that counts dials."""

    def __init__(self) -> None:
        super().__init__()
        self.dials = 0

    async def dial(self, maddr):
        self.dials += 1
        return await super().dial(maddr)


async def test_nodes_run_on_an_injected_transport_and_read_time_from_the_injected_clock(mock_clock) -> None:
    mock_clock.rate = 1.0  # real sockets: let virtual time pass at wall speed
    clock = TrioClock(EPOCH_MS)
    transport = CountingTCP()
    async with open_test_node(1, clock=clock) as alice:
        async with open_test_node(
            2, bootstrap=(alice.p2p.addrs()[0],), clock=clock, transport=transport
        ) as bob:
            await wait_for(lambda: view_ids(bob) == {alice.peer_id}, 15)
            advert = bob.p2p.view.get(alice.peer_id, clock.now_ms())
            # Issued on the injected clock, not the wall clock (years away from EPOCH_MS).
            assert EPOCH_MS <= advert.issued_at <= clock.now_ms()
            assert transport.dials >= 1


async def test_the_status_endpoint_reports_peers_adverts_with_expiry_and_rejections() -> None:
    import httpx

    async with open_test_node(1, api="127.0.0.1:0") as alice:
        async with open_test_node(2, bootstrap=(alice.p2p.addrs()[0],)) as bob:
            await wait_for(lambda: view_ids(alice) == {bob.peer_id}, 10)
            async with httpx.AsyncClient() as client:
                status = (await client.get(alice.api_url + "/status")).json()
                missing = await client.get(alice.api_url + "/nope")
                bad = await client.get(alice.api_url + "/providers", params={"model": "zz"})
            addrs = alice.p2p.addrs()
    assert status["peer_id"] == alice.peer_id and status["addrs"] == addrs
    assert status["peers"] == [bob.peer_id]
    (advert,) = status["adverts"]
    assert advert["peer_id"] == bob.peer_id and advert["expires_at"] > advert["seq"] > 0
    assert 0 < advert["expires_in_s"] <= 120
    assert isinstance(status["rejected"], dict)
    assert missing.status_code == 404 and bad.status_code == 400
