"""The job a worker is sent for a session."""

from dataclasses import fields

from tests.factories import gen_model, gen_session
from tests.helpers import make_user
from webapp.engine.runner import SessionJob
from webapp.extensions import db
from webapp.services import session_runs
from webapp.services.executor import Supervisor
from webapp.tables import utcnow


def test_the_job_carries_the_models_task_metric(app):
    """Does a worker judge a session by the metric its model was uploaded with?"""
    owner = make_user("owner")
    model = gen_model(owner, task="ctc")
    stored = app.extensions["optideck.blobs"].path_for(model.sha256)
    stored.parent.mkdir(parents=True, exist_ok=True)
    stored.write_bytes(b"model")
    session = gen_session(model, owner, status="running", started_at=utcnow())
    session.criteria = {"max_optimization_time_minutes": 5}
    job = session_runs.job_for(session)
    assert job["task"] == "ctc"
    # The worker builds its SessionJob from these keys (and the executor's work_dir).
    assert set(job) <= {field.name for field in fields(SessionJob)}
    assert SessionJob(**job, work_dir="work").task == "ctc"


def test_a_session_whose_model_file_is_gone_fails_storage_error(app):
    """Is a session whose model the store cannot give failed with that reason, before any
    worker is started, instead of crashing the executor's loop?"""
    owner = make_user("owner")
    session = gen_session(gen_model(owner), owner, status="running", started_at=utcnow())
    session.criteria = {"max_optimization_time_minutes": 5, "threads": 1}

    def no_worker(threads):
        raise AssertionError("no worker may start for a session without its model")

    assert Supervisor(app).launch(session, no_worker) is None
    db.session.refresh(session)
    assert (session.status, session.error_type) == ("failed", "storage_error")
    assert session.error_message == "The model's file is missing from storage."
