"""Latency that says how sure it is.

One run of a model is noisy: other load on the host, frequency scaling and caches move it by
tens of percent from one minute to the next. So a median comes with a distribution-free
interval, and two models are compared in paired rounds in one process: each round times both,
in alternating order, and the verdict rests on the per-round ratios, which drift moves little.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from .loading import LoadedModel

CONFIDENCE = 0.95
WARMUP_RUNS = 5
MIN_ROUNDS = 15
MAX_ROUNDS = 201
BUDGET_S = 2.0  # a timing stops after this, once it has MIN_ROUNDS
ROUND_S = 0.005  # a round repeats a fast model's runs until it lasts about this long
MAX_REPEATS = 50

Feeds = dict[str, np.ndarray]


def median_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float]:
    """An interval holding the true median with at least `confidence`, from order statistics:
    the count of values below the median is binomial(n, 1/2), whatever their distribution."""
    ordered = sorted(values)
    n = len(ordered)
    tail = (1 - confidence) / 2
    below, cumulative = 0, 0.0
    # The largest k with P(Binomial(n, 1/2) < k) <= tail; the interval is the k-th smallest
    # and k-th largest value (k counted from 1). Too few values for any k: the full range.
    for k in range(n):
        cumulative += math.comb(n, k) / 2**n
        if cumulative > tail:
            break
        below = k + 1
    if below == 0:
        return ordered[0], ordered[-1]
    return ordered[below - 1], ordered[n - below]


@dataclass
class Latency:
    """The median time of one run (one batch), in ms, and the interval around it."""

    median_ms: float
    low_ms: float
    high_ms: float
    runs: int


@dataclass
class Comparison:
    """Two models timed in paired rounds. `speedup` is the reference's time over the
    candidate's (2.0: the candidate is twice as fast), the median of the per-round ratios,
    with its interval."""

    speedup: float
    low: float
    high: float
    reference: Latency
    candidate: Latency
    rounds: int

    def as_dict(self) -> dict:
        return asdict(self)

    def slower_than(self, tolerance_percent: float) -> bool:
        """Whether the candidate is slower by more than the tolerance even at the favourable
        end of the interval: noise alone never rolls a step back."""
        return self.high < 1 / (1 + tolerance_percent / 100)


def _timed(model: LoadedModel, feeds: Feeds, repeats: int) -> float:
    """Seconds per run, over `repeats` runs."""
    started = time.perf_counter()
    for _ in range(repeats):
        model.run(feeds)
    return (time.perf_counter() - started) / repeats


def _latency(per_run_s: Sequence[float]) -> Latency:
    low, high = median_interval(per_run_s)
    median = statistics.median(per_run_s)
    return Latency(round(median * 1000, 4), round(low * 1000, 4), round(high * 1000, 4), len(per_run_s))


def _repeats(*per_run_s: float) -> int:
    return max(1, min(MAX_REPEATS, math.ceil(ROUND_S / max(max(per_run_s), 1e-9))))


def latency(
    model: LoadedModel, feeds: Feeds, check: Callable[[], None], budget_s: float = BUDGET_S
) -> Latency:
    """One model alone (an upload's analysis, a baseline): rounds until the budget is spent."""
    for _ in range(WARMUP_RUNS):
        model.run(feeds)
    repeats = _repeats(_timed(model, feeds, 1))
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < MAX_ROUNDS:
        check()
        times.append(_timed(model, feeds, repeats))
        if len(times) >= MIN_ROUNDS and time.perf_counter() - started > budget_s:
            break
    return _latency(times)


def compare(
    reference: LoadedModel,
    reference_feeds: Feeds,
    candidate: LoadedModel,
    candidate_feeds: Feeds,
    check: Callable[[], None],
    budget_s: float = BUDGET_S,
) -> Comparison:
    """Time both models in paired rounds, alternating which goes first."""
    for _ in range(WARMUP_RUNS):
        reference.run(reference_feeds)
        candidate.run(candidate_feeds)
    repeats = _repeats(_timed(reference, reference_feeds, 1), _timed(candidate, candidate_feeds, 1))
    ratios: list[float] = []
    times: dict[str, list[float]] = {"reference": [], "candidate": []}
    started = time.perf_counter()
    while len(ratios) < MAX_ROUNDS:
        check()
        if len(ratios) % 2 == 0:
            ref = _timed(reference, reference_feeds, repeats)
            cand = _timed(candidate, candidate_feeds, repeats)
        else:
            cand = _timed(candidate, candidate_feeds, repeats)
            ref = _timed(reference, reference_feeds, repeats)
        times["reference"].append(ref)
        times["candidate"].append(cand)
        ratios.append(ref / cand if cand > 0 else 0.0)
        if len(ratios) >= MIN_ROUNDS and time.perf_counter() - started > budget_s:
            break
    low, high = median_interval(ratios)
    return Comparison(
        speedup=round(statistics.median(ratios), 4),
        low=round(low, 4),
        high=round(high, 4),
        reference=_latency(times["reference"]),
        candidate=_latency(times["candidate"]),
        rounds=len(ratios),
    )
