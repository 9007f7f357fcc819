"""When a serving node's free capacity is worth a network-wide advert (`capacity_news`)."""

from __future__ import annotations

from node.model_services import capacity_news

TOTAL = (8, 4096)


def test_becoming_full_or_free_again_is_news() -> None:
    assert capacity_news((1, 3000), (0, 2900), TOTAL) == "flip"
    assert capacity_news((0, 100), (1, 600), TOTAL) == "flip"


def test_small_changes_ride_on_the_periodic_republish() -> None:
    assert capacity_news((8, 4096), (7, 4000), TOTAL) is None  # one session of eight, a few tokens
    assert capacity_news((5, 2000), (5, 1990), TOTAL) is None  # a token generated


def test_a_quarter_of_the_total_is_news() -> None:
    assert capacity_news((8, 4096), (6, 4096), TOTAL) == "step"
    assert capacity_news((8, 4096), (8, 3072), TOTAL) == "step"


def test_a_single_session_node_flips_only() -> None:
    assert capacity_news((1, 512), (0, 0), (1, 512)) == "flip"
    assert capacity_news((1, 512), (1, 500), (1, 512)) is None
