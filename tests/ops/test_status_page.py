"""The status page in a real headless Chromium, on a real two-node swarm generating real tokens.

bob serves every layer of a make-tiny checkpoint; alice is a gateway that keeps asking through bob. The
page on bob's API must load without a console error and show numbers that move between polls.
"""

from __future__ import annotations

import httpx
import pytest
import trio

from node.inference.maketiny import make_tiny
from node.status_page import page

from .cdp import chromium_path, open_page
from .ops_driver import model_settings, open_ops_node, wait_for

needs_chromium = pytest.mark.skipif(
    chromium_path() is None, reason="no chromium on PATH (Debian: apt-get install -y chromium)"
)


async def test_the_page_is_served_with_a_policy_that_pins_its_inline_script_and_style() -> None:
    async with open_ops_node(5) as node:
        async with httpx.AsyncClient() as http:
            reply = await http.get(node.url + "/")
    assert reply.status_code == 200
    assert reply.headers["content-type"] == "text/html; charset=utf-8"
    csp = reply.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp and "unsafe-inline" not in csp
    assert reply.content == page()[0]
    assert "http://" not in reply.text and "https://" not in reply.text  # nothing fetched from elsewhere


async def _keep_asking(api_url: str) -> None:
    """Completions through the gateway's OpenAI-compatible API, one after another, until cancelled."""
    async with httpx.AsyncClient(timeout=60) as http:
        for i in range(10_000):
            req = {"model": "tiny", "prompt": "steppe " * (1 + i % 5), "max_tokens": 6, "temperature": 0}
            reply = await http.post(api_url + "/v1/completions", json=req)
            assert reply.status_code == 200, reply.text
            await trio.sleep(0.2)


@needs_chromium
async def test_the_status_page_shows_live_numbers_from_a_serving_swarm_without_console_errors(
    tmp_path,
) -> None:
    model = tmp_path / "tiny"
    make_tiny(model, arch="llama", layers=2, hidden=64, heads=4, kv_heads=2, vocab=384, seed=3)
    async with open_ops_node(2, model=model_settings(model, (0, 2))) as bob:
        boot = (bob.node.p2p.addrs()[0],)
        async with open_ops_node(1, bootstrap=boot, model=model_settings(model, None)) as alice:

            def bob_in_view() -> bool:
                adverts = alice.node.p2p.view.adverts(alice.node.p2p.clock.now_ms())
                return any(a.peer_id == bob.node.peer_id and a.body.model is not None for a in adverts)

            await wait_for(bob_in_view, 30)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_keep_asking, alice.url)
                async with open_page(bob.url + "/", tmp_path / "chromium") as tab:

                    async def read() -> dict:
                        # Until the page has loaded, the tab still shows about:blank: read nothing then.
                        return await tab.evaluate(
                            "(() => { const t = (id) => document.getElementById(id)?.textContent;"
                            " return {polls: +(t('polls') ?? 0), tokens: t('tokens-served') ?? '—',"
                            " peers: t('peers-count'), points: +(document.getElementById('chart')?.dataset.points ?? 0),"
                            " peer: t('peer-id'), live: t('live'), serving: t('serving')}; })()"
                        )

                    with trio.fail_after(40):
                        first = await read()
                        while first["polls"] < 1 or first["tokens"] in ("—", "0"):
                            await trio.sleep(0.5)
                            first = await read()
                        later = await read()
                        while later["polls"] < first["polls"] + 2:
                            await trio.sleep(0.5)
                            later = await read()
                    shot = await tab.screenshot(tmp_path / "status-page.png")
                    errors = list(tab.errors)
                nursery.cancel_scope.cancel()
            async with httpx.AsyncClient() as http:
                metrics = (await http.get(bob.url + "/metrics")).text
    assert errors == []
    assert first["peer"] == bob.node.peer_id and later["live"] == "live"
    assert later["peers"] == "1"
    assert int(later["tokens"].replace(",", "")) > int(first["tokens"].replace(",", "")) > 0
    assert later["points"] >= 2  # the chart draws throughput from successive polls
    assert "tiny" in later["serving"] and "0:2 of 2" in later["serving"]
    served = next(line for line in metrics.splitlines() if line.startswith("steppe_tokens_served_total "))
    assert float(served.split()[1]) >= int(later["tokens"].replace(",", ""))
    assert shot.startswith(b"\x89PNG") and (tmp_path / "status-page.png").stat().st_size > 10_000


def test_recent_errors_keep_the_event_and_known_fields_but_not_the_rest_of_a_log_line() -> None:
    import logging

    from node.logging import configure_logging, get_logger
    from node.status_page import install_recent_errors

    configure_logging("json", "info")
    errors = install_recent_errors(capacity=3)
    try:
        log = get_logger("steppe.test")
        log.info("fine")
        log.warning("hop_failed", peer_id="12D3KooWabc", error="stalled", prompt="my secret question")
        logging.getLogger("libp2p.x").error("dial %s failed", "peer")
        for i in range(3):
            log.error("later", code=str(i))
    finally:
        logging.getLogger().removeHandler(errors)
    entries = errors.snapshot()
    assert [e["event"] for e in entries] == ["later", "later", "later"]  # bounded, newest kept
    errors.entries.clear()
    errors.emit(
        logging.LogRecord(
            "steppe.test",
            logging.WARNING,
            __file__,
            1,
            {"event": "hop_failed", "error": "stalled", "prompt": "my secret question"},
            None,
            None,
        )
    )
    (entry,) = errors.snapshot()
    assert entry["event"] == "hop_failed" and "error=stalled" in entry["detail"]
    assert "secret" not in str(entry)
