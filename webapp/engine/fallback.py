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
    measured: dict[tuple[str, ...], float | None] = {}

    def holds(runs: list[list[str]]) -> bool | None:
        key = tuple(node for run in runs for node in run)
        if key not in measured:
            measured[key] = retention(list(key))
        found = measured[key]
        return None if found is None else found >= floor

    if not nodes:
        return None
    size = -(-len(nodes) // BLOCKS)
    blocks = [nodes[start : start + size] for start in range(0, len(nodes), size)]
    chosen: list[list[str]] = []
    for block in blocks:
        verdict = holds([block])
        if verdict is None:
            return None
        if verdict:  # one run is enough: halving finds how little of it
            chosen = [block]
            break
    else:
        ranked = sorted(blocks, key=lambda block: measured[tuple(block)] or 0.0, reverse=True)
        for block in ranked:
            chosen.append(block)
            verdict = holds(chosen)
            if verdict is None:
                return None
            if verdict:
                break
        else:
            return None
        # A run added early may have been needed only until a later one came: drop each
        # one the floor holds without, the least recovering first.
        for run in sorted(chosen[:-1], key=lambda run: measured[tuple(run)] or 0.0):
            trial = [other for other in chosen if other is not run]
            verdict = holds(trial)
            if verdict is None:
                return _joined(chosen, nodes)
            if verdict:
                chosen = trial
    # Halve each chosen run while the floor holds with one of its halves alone.
    index = 0
    while index < len(chosen):
        run = chosen[index]
        halves = [run[: len(run) // 2], run[len(run) // 2 :]] if len(run) > 1 else []
        for half in halves:
            trial = chosen[:index] + [half] + chosen[index + 1 :]
            verdict = holds(trial)
            if verdict is None:
                return _joined(chosen, nodes)
            if verdict:
                chosen = trial
                break
        else:
            index += 1
    return _joined(chosen, nodes)


def _joined(runs: list[list[str]], nodes: list[str]) -> list[str] | None:
    """The runs' nodes in graph order; None when that is every node: the float model."""
    chosen = {node for run in runs for node in run}
    return None if len(chosen) == len(nodes) else [node for node in nodes if node in chosen]
