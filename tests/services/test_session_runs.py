"""The job a worker is sent for a session."""

from dataclasses import fields

from tests.factories import gen_model, gen_session
from tests.helpers import make_user
from webapp.engine.runner import SessionJob
from webapp.services import session_runs
from webapp.tables import utcnow


def test_the_job_carries_the_models_task_metric(app):
    """Does a worker judge a session by the metric its model was uploaded with?"""
    owner = make_user("owner")
    model = gen_model(owner, task="ctc")
    session = gen_session(model, owner, status="running", started_at=utcnow())
    session.criteria = {"max_optimization_time_minutes": 5}
    job = session_runs.job_for(session)
    assert job["task"] == "ctc"
    # The worker builds its SessionJob from these keys (and the executor's work_dir).
    assert set(job) <= {field.name for field in fields(SessionJob)}
    assert SessionJob(**job, work_dir="work").task == "ctc"
