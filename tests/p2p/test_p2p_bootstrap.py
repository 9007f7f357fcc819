from __future__ import annotations

import trio

from protocol.identity import Identity

from .p2p_driver import free_port, open_test_node, view_ids, wait_for


async def test_a_node_keeps_retrying_its_bootstrap_peer_and_reconnects_after_it_restarts() -> None:
    port = free_port()
    boot_id = Identity.from_int(1).peer_id
    boot_addr = f"/ip4/127.0.0.1/tcp/{port}/p2p/{boot_id}"
    async with open_test_node(2, bootstrap=(boot_addr,)) as bob:
        await trio.sleep(1.5)  # bob has failed a few dials by now and is backing off
        for _life in range(2):
            async with open_test_node(1, listen=(f"/ip4/127.0.0.1/tcp/{port}",)) as alice:
                await wait_for(lambda: alice.p2p.host.get_id() in bob.p2p.host.get_connected_peers(), 15)
                await wait_for(lambda: view_ids(bob) == {alice.peer_id}, 10)
            # A graceful exit withdraws the advert: gone long before its 120 s TTL.
            await wait_for(lambda: view_ids(bob) == set(), 5)
            await wait_for(lambda: not bob.p2p.host.get_connected_peers(), 10)
