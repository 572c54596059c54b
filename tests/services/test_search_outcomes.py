"""What a search's worker hands back is checked like any worker's word: its candidates'
figures, the files it says it kept, and the timeline lines the page plots while it runs.
(A hostile model may have taken the worker over; these are the review's findings.)"""

from __future__ import annotations

import subprocess
import time

import pytest

from tests.factories import gen_model
from tests.helpers import make_user
from webapp.extensions import db
from webapp.services import artifacts, get
from webapp.tables import OptimizationSession, SessionEvent, utcnow

MEASURED = {
    "index": 1,
    "configuration": "int8 dynamic",
    "steps": [],
    "size_bytes": 100,
    "size_reduction_percent": 10.0,
    "latency_ms": 1.0,
    "latency_low_ms": 0.9,
    "latency_high_ms": 1.1,
    "speedup": 1.5,
    "speedup_low": 1.4,
    "speedup_high": 1.6,
    "accuracy_retention_percent": 99.5,
}
FIGURES = {name: 1.0 for name in artifacts.NUMBERS} | {"criteria_met": True}


def _outcome(candidates, chosen=0, **extra):
    return {"results": {**FIGURES, "candidates": candidates, "chosen": chosen, **extra}, "steps": []}


@pytest.mark.parametrize(
    "bad",
    [
        {"index": 1, "speedup": 1.0},  # measured in part
        {**MEASURED, "speedup": "fast"},
        {**MEASURED, "size_bytes": "abc"},
        {**MEASURED, "size_bytes": 10**400},
        {**MEASURED, "size_reduction_percent": 10**400},
        {**MEASURED, "latency_ms": [1]},
        {**MEASURED, "index": True},
        {**MEASURED, "index": 64},
        {**MEASURED, "steps": "none"},
        {**MEASURED, "steps": [{"technique": ["quantization"]}]},
        {**MEASURED, "steps": [{"technique": "pruning", "params": [0.5]}]},
    ],
)
def test_a_candidate_reported_with_bad_figures_is_refused(bad):
    with pytest.raises(artifacts.Refused):
        artifacts.clean_candidate(bad)


@pytest.mark.parametrize(
    "step",
    [
        {"technique": "pruning", "outcome": []},  # every page listing the session read it
        {"technique": {"a": 1}, "outcome": "kept"},
        {"technique": "pruning", "outcome": "exploded"},
        {"technique": "pruning", "params": "sparsity 0.5", "outcome": "kept"},
    ],
)
def test_a_report_with_an_odd_step_is_refused(step):
    with pytest.raises(artifacts.Refused):
        artifacts.results({"results": FIGURES, "steps": [step]}, 1000, 900)


def test_a_measured_candidate_without_words_gets_a_name():
    unnamed = {key: value for key, value in MEASURED.items() if key != "configuration"}
    assert artifacts.clean_candidate(unnamed)["configuration"] == "candidate 1"


def test_reported_words_are_bounded():
    cleaned = artifacts.clean_candidate({**MEASURED, "configuration": "C" * 60_000, "reason": "R" * 9000})
    assert len(cleaned["configuration"]) == 300 and len(cleaned["reason"]) == 500


def test_search_results_are_refused_unless_they_hold_what_a_search_returns():
    original = {**MEASURED, "index": 0, "kept": True}
    assert artifacts.results(_outcome([original]), 1000, 900, {0: 900}, search=True)["chosen"] == 0
    refused = [
        (_outcome([original]), False),  # candidates in a session that was not a search
        ({"results": FIGURES, "steps": []}, True),  # a search without candidates
        (_outcome(None), True),
        (_outcome([original], chosen=1), True),  # chosen is not a kept candidate
        (_outcome([{**original, "steps": [{"x": "s" * (1 << 20)}]}]), True),  # too large
        (_outcome([original], original_compressed_size_bytes=10**400), True),
    ]
    for outcome, search in refused:
        with pytest.raises(artifacts.Refused):
            artifacts.results(outcome, 1000, 900, {0: 900}, search=search)


def test_a_search_may_hand_back_only_so_many_files():
    kept = [{"kept": True}] * 17
    with pytest.raises(artifacts.Refused):
        artifacts.kept_candidates({"results": {"candidates": kept}})
    assert artifacts.kept_candidates({"results": {"candidates": [{"kept": True}, {}]}}) == [0]


def _running_search(owner):
    now = utcnow()
    session = OptimizationSession(
        model_id=gen_model(owner, "m").id,
        owner_id=owner.id,
        status="running",
        techniques=["auto"],
        parameters={},
        criteria={"min_accuracy_retention_percent": 99.0},
        plan=[{"technique": "auto", "params": {}}],
        created_at=now,
        updated_at=now,
        started_at=now,
        heartbeat_at=now,
    )
    db.session.add(session)
    db.session.commit()
    return session


class _FinishedWorker:
    """The far side of the sandbox after its worker ended: its output folder, as the real
    Worker reads it (take_output is the real method)."""

    def __init__(self, out_dir):
        from webapp.services.sandbox import Worker

        self.out_dir = out_dir
        self.take_output = Worker.take_output.__get__(self)
        self.process = subprocess.Popen(["true"])
        self.process.wait()  # it has ended

    def kill(self):
        pass


def test_a_search_that_hands_back_less_than_it_claims_fails_and_leaves_no_copy(app, tmp_path):
    from webapp.engine.runner import ARTIFACT_NAME
    from webapp.services.executor import _Running

    owner = make_user("op", "operator")
    out = tmp_path / "out"
    out.mkdir()
    (out / ARTIFACT_NAME).write_bytes(b"A" * 100_000)
    executor = app.extensions["optideck.executor"]
    tmp_dir = get("blobs").tmp_dir
    before = set(tmp_dir.iterdir())
    for outcome in (_outcome([{"kept": True}]), _outcome([{}] * 65)):
        session = _running_search(owner)
        executor._complete(_Running(session.id, _FinishedWorker(out), time.time() + 60), outcome)
        db.session.refresh(session)
        assert session.status == "failed"
    assert set(tmp_dir.iterdir()) == before


def test_the_page_plots_only_checked_lines_while_a_search_runs(app, operator):
    from webapp.services import search_front

    session = _running_search(operator.user)
    for data in ({"candidate": MEASURED}, {"candidate": {**MEASURED, "configuration": "later"}}):
        db.session.add(
            SessionEvent(session_id=session.id, kind="step_completed", step="c", message="", data=data)
        )
    db.session.commit()
    front = search_front.front(session)
    assert [c["configuration"] for c in front["candidates"]] == ["later"]  # the latest line counts
    page = operator.client.get(f"/sessions/{session.id}")
    assert page.status_code == 200 and "Search: 1 candidate so far" in page.get_data(as_text=True)


def test_a_timeline_line_with_bad_candidate_figures_keeps_its_words_but_not_the_figures(app, tmp_path):
    from webapp.services.executor import _Running

    session = _running_search(make_user("op", "operator"))
    running = _Running(session.id, _FinishedWorker(tmp_path), time.time() + 60)
    executor = app.extensions["optideck.executor"]
    for candidate in ({**MEASURED, "speedup": "fast"}, MEASURED):
        executor._handle(
            running, ["event", "step_completed", "candidate 1", "line", {"candidate": candidate}]
        )
    stored = [e.data for e in db.session.query(SessionEvent).filter_by(session_id=session.id)]
    assert stored[0] == {} and stored[1]["candidate"]["speedup"] == 1.5


def test_a_completed_search_page_shows_failed_and_measured_candidates(app, operator):
    session = _running_search(operator.user)
    failed = {
        "index": 1,
        "configuration": "int4 weights",
        "steps": [],
        "outcome": "failed",
        "reason": "crashed",
    }
    original = {**MEASURED, "index": 0, "kept": True, "pareto": True}
    results = artifacts.results(_outcome([original, failed]), 1000, 900, {0: 900}, search=True)
    session.status, session.results = "completed", results
    db.session.commit()
    page = operator.client.get(f"/sessions/{session.id}")
    text = page.get_data(as_text=True)
    assert page.status_code == 200
    assert "not measured" in text and "crashed" in text and "candidate=0" in text
