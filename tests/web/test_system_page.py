"""The admin System page: the server's state at a glance."""

from __future__ import annotations

import os
import platform
import re
from importlib import metadata

import pytest
from markupsafe import escape

from tests.factories import gen_model, gen_session
from tests.helpers import make_user
from webapp.extensions import db
from webapp.services import alerts, metrics
from webapp.tables import AuditEntry, StoredFile, utcnow
from webapp.web.filters import filesize


def card(page: str, card_id: str) -> str:
    """The value shown on one of the page's cards."""
    match = re.search(rf'id="{card_id}".*?class="card-value">([^<]*)<', page, re.S)
    assert match, f"no card {card_id}"
    return match.group(1).strip()


def test_admin_sees_each_figure(app, admin):
    owner = make_user("owner")
    model = gen_model(owner, name="resnet-ish")
    for status in ("queued", "queued", "running", "completed"):
        gen_session(model, owner, status=status)
    failed = gen_session(
        model, owner, status="failed", error_type="worker_lost", error_message="The worker died."
    )
    alerts.session_failed(failed)
    db.session.add_all(
        [
            StoredFile(sha256="a" * 64, size_bytes=1500),
            StoredFile(sha256="b" * 64, size_bytes=500),
            StoredFile(sha256="c" * 64, size_bytes=9999, removed_at=utcnow()),
        ]
    )
    db.session.commit()
    metrics.CONNECTIONS_OPEN.labels("api").inc()
    try:
        response = admin.client.get("/admin/system")
        connections = metrics.connections_open()
    finally:
        metrics.CONNECTIONS_OPEN.labels("api").dec()
    assert response.status_code == 200
    page = response.get_data(as_text=True)

    capacity = app.config["OPTIDECK"]["executor"]["max_workers"]
    assert card(page, "system-workers") == f"1 / {capacity}"
    assert card(page, "system-queue") == "2"
    assert connections >= 1
    assert card(page, "system-connections") == str(connections)
    assert card(page, "system-storage") == filesize(2000)
    assert "2 stored files" in page
    # Processes.
    assert f"pid {os.getpid()}" in page
    assert "server.workers" in page
    # Alerts: the counter by kind and the failed session behind it.
    assert "session_failed" in page
    assert f"#{failed.id}" in page
    assert "worker_lost: The worker died." in page
    # Isolation, as on /config.
    assert str(escape(app.extensions["optideck.sandbox"].describe())) in page
    # Versions.
    assert platform.python_version() in page
    for package in ("optideck", "onnxruntime", "onnx"):
        assert metadata.version(package) in page
    assert "torch" in page
    # Backends: named, never their URLs.
    assert db.engine.url.get_backend_name() in page
    assert "not configured" in page
    assert str(db.engine.url.database) not in page


def test_tables_name_their_headers(admin):
    page = admin.client.get("/admin/system").get_data(as_text=True)
    assert "<th>" not in page
    for region in re.findall(r'<div class="scroll-x"[^>]*>', page):
        if 'tabindex="0"' in region:
            assert 'role="region"' in region and "aria-label=" in region


@pytest.mark.parametrize("who", ["operator", "viewer"])
def test_non_admins_get_an_audited_403(request, who):
    role_client = request.getfixturevalue(who)
    response = role_client.client.get("/admin/system")
    assert response.status_code == 403
    denial = db.session.query(AuditEntry).filter_by(allowed=False).one()
    assert denial.username == role_client.user.username
    assert denial.resource == "/admin/system"
