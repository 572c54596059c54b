"""The guides: public, and written from the registry so they list what really exists."""

from webapp.engine.metrics import TASKS
from webapp.engine.techniques import TECHNIQUES


def test_the_sessions_guide_is_public_and_covers_every_technique_and_metric(client):
    response = client.get("/docs/sessions")
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    for heading in ("Starting a session", "Reading the report", "Search results", "Comparing sessions"):
        assert heading in page
    for technique in TECHNIQUES.values():
        assert f"<code>{technique.id}</code>" in page
        for param in technique.form_params:
            assert f"<code>{param.name}</code>" in page
    for task in TASKS.values():
        assert task.label in page


def test_the_start_form_and_compare_page_link_to_the_guide(operator):
    for path in ("/sessions", "/sessions/compare"):
        assert 'href="/docs/sessions' in operator.client.get(path).get_data(as_text=True), path
