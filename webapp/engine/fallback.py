"""The accuracy-aware fallback: which nodes an int8 configuration must leave in float for the
task metric to hold, found by measuring that metric.

The quantized nodes, in graph order, are cut into BLOCKS runs. Each run is left in float on
its own and the metric measured (one quantization and one pass over the evaluation data
each); runs are added, the one that recovered most first, until the floor holds; then a run
the floor holds without is dropped, and each chosen run is halved while the floor still
holds, so that as few nodes as possible stay in float (each left in float costs speed).

Measuring the metric, rather than ranking nodes by how much signal-to-noise ratio int8 costs
them (ORT's qdq_loss_debug), is what finds the nodes that matter: on nudenet's YOLOv8n
detector the ranking's 1-16 worst convolutions in float kept F1 at 93.7-95.4 %, while
measuring found the first four convolutions (99.3 %, 11 measurements, 30 s).
"""

from __future__ import annotations

from collections.abc import Callable

BLOCKS = 8

# The retention (percent) with the given nodes left in float, or None when the time for
# measuring has run out.
Retention = Callable[[list[str]], float | None]


def float_nodes(nodes: list[str], retention: Retention, floor: float) -> list[str] | None:
    """The nodes of `nodes` to leave in float for `retention` to reach `floor`, in graph
    order, or None when no set measured holds it but all of them (the float model). With
    time running out, the smallest set that held so far."""
    if not nodes:
        return None
    probe = _Probe(nodes, retention, floor)
    size = -(-len(nodes) // BLOCKS)
    blocks = [nodes[start : start + size] for start in range(0, len(nodes), size)]
    try:
        chosen = _runs_that_hold(blocks, probe)
        if chosen is not None:
            _halve(chosen, probe)
    except _OutOfTime:
        pass
    # Each step moves only to a set that held, so the last that held is the smallest.
    if probe.held is None or len(probe.held) == len(nodes):
        return None
    return [node for node in nodes if node in probe.held]


class _OutOfTime(Exception):
    pass


class _Probe:
    """Whether the floor holds with some runs of nodes in float, each set measured once."""

    def __init__(self, nodes: list[str], retention: Retention, floor: float):
        self.nodes, self.retention, self.floor = nodes, retention, floor
        self.measured: dict[frozenset[str], float] = {}
        self.held: frozenset[str] | None = None

    def __call__(self, runs: list[list[str]]) -> bool:
        key = frozenset(node for run in runs for node in run)
        if key not in self.measured:
            found = self.retention([node for node in self.nodes if node in key])
            if found is None:
                raise _OutOfTime
            self.measured[key] = found
        if self.measured[key] < self.floor:
            return False
        self.held = key
        return True

    def recovered(self, run: list[str]) -> float:
        return self.measured[frozenset(run)]


def _runs_that_hold(blocks: list[list[str]], probe: _Probe) -> list[list[str]] | None:
    for block in blocks:
        if probe([block]):
            return [block]  # one run is enough: halving finds how little of it
    chosen: list[list[str]] = []
    for block in sorted(blocks, key=probe.recovered, reverse=True):
        chosen.append(block)
        if probe(chosen):
            break
    else:
        return None
    # A run added early may have been needed only until a later one came: drop each one
    # the floor holds without, the least recovering first.
    for run in sorted(chosen[:-1], key=probe.recovered):
        trial = [other for other in chosen if other is not run]
        if probe(trial):
            chosen = trial
    return chosen


def _halve(chosen: list[list[str]], probe: _Probe) -> None:
    """Halve each run while the floor holds with one of its halves alone."""
    index = 0
    while index < len(chosen):
        run = chosen[index]
        for half in [run[: len(run) // 2], run[len(run) // 2 :]] if len(run) > 1 else []:
            trial = chosen[:index] + [half] + chosen[index + 1 :]
            if probe(trial):
                chosen = trial
                break
        else:
            index += 1
