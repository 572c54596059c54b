"""The accuracy-aware fallback's search for the nodes to leave in float, on a metric given
as a function of those nodes (the runner's measures a real model: tests/engine/test_search.py)."""

from __future__ import annotations

from webapp.engine import fallback

NODES = [f"conv{i}" for i in range(40)]


def _metric(needed: set[str], calls: list):
    """99.5 % with every node of `needed` in float, 1 % lost for each one quantized."""

    def retention(excluded: list[str]) -> float:
        calls.append(list(excluded))
        return 99.5 - len(needed - set(excluded))

    return retention


def test_one_run_that_holds_is_halved_to_the_nodes_that_matter():
    calls = []
    found = fallback.float_nodes(NODES, _metric({"conv2"}, calls), 99.0)
    assert found == ["conv2"]
    # The first run of 5 holds at once; halving it takes 3 more measurements, not 40.
    assert len(calls) <= 5


def test_runs_are_added_by_what_they_recover_until_the_floor_holds():
    calls = []
    needed = {"conv1", "conv22", "conv23", "conv38"}
    found = fallback.float_nodes(NODES, _metric(needed, calls), 99.0)
    assert set(found) >= needed and len(found) <= 8
    assert len(calls) < len(NODES)


def test_nothing_that_holds_gives_none():
    assert fallback.float_nodes(NODES, lambda excluded: 90.0, 99.0) is None
    assert fallback.float_nodes([], lambda excluded: 100.0, 99.0) is None


def test_when_time_runs_out_the_smallest_set_that_held_is_kept():
    calls = []
    metric = _metric({"conv7"}, calls)

    def timed(excluded):
        return None if len(calls) >= 2 else metric(excluded)

    # The second run (conv5..conv9) holds, then time is up before any halving.
    assert fallback.float_nodes(NODES, timed, 99.0) == NODES[5:10]
    calls.clear()
    assert fallback.float_nodes(NODES, lambda excluded: None, 99.0) is None
