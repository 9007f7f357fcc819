from __future__ import annotations

import io
import json
import logging

import pytest

from node.logging import configure_logging, get_logger


def test_json_lines_when_not_a_tty_with_key_values() -> None:
    stream = io.StringIO()
    configure_logging("auto", "info", stream=stream)
    get_logger("steppe.test", peer_id="12D3").info("advert_published", layers="0:4")
    line = json.loads(stream.getvalue().strip().splitlines()[-1])
    assert line["event"] == "advert_published"
    assert line["layers"] == "0:4" and line["peer_id"] == "12D3" and line["level"] == "info"


def test_libp2p_logging_goes_through_structlog_and_is_quiet_by_default() -> None:
    stream = io.StringIO()
    configure_logging("json", "info", stream=stream)
    logging.getLogger("libp2p.pubsub").info("chatter")
    logging.getLogger("libp2p.pubsub").warning("something wrong")
    lines = [json.loads(x) for x in stream.getvalue().strip().splitlines()]
    assert [x["event"] for x in lines] == ["something wrong"]
    assert lines[0]["logger"] == "libp2p.pubsub"


def test_debug_level_lets_libp2p_speak() -> None:
    stream = io.StringIO()
    configure_logging("json", "debug", stream=stream)
    logging.getLogger("libp2p.swarm").debug("dialing")
    assert "dialing" in stream.getvalue()


def test_an_unknown_level_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown log level"):
        configure_logging("json", "loud")


def test_a_logger_made_before_configuration_follows_the_configuration() -> None:
    early = get_logger("steppe.early", part="x")
    stream = io.StringIO()
    configure_logging("json", "info", stream=stream)
    early.info("after_configure")
    line = json.loads(stream.getvalue().strip().splitlines()[-1])
    assert line["event"] == "after_configure" and line["part"] == "x" and line["logger"] == "steppe.early"
