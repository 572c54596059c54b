"""The Configuration page: read-only for most, edit, validate as you go, stale save, revert."""

import re

from tests.helpers import csrf_from
from webapp.services import criteria


def form_for(document: dict, version: int, **changes) -> dict:
    """The criteria as the page's form posts them."""
    values = {**document, **changes}
    data = {"version": str(version)}
    for key, value in values.items():
        if isinstance(value, bool):
            if value:
                data[key] = "on"
        elif isinstance(value, list):
            data[key] = value
        else:
            data[key] = str(value)
    return data


def test_viewers_see_the_criteria_read_only(viewer):
    text = viewer.client.get("/config").get_data(as_text=True)
    assert "read-only view" in text and "<fieldset disabled" in text
    assert "Save as version" not in text
    assert "Server settings" not in text


def test_admin_saves_a_new_version(admin):
    document = criteria.current().document
    response = admin.auth.post("/config", form_for(document, 0, threads="2"))
    assert response.status_code == 302
    assert criteria.current().version == 1
    assert criteria.current().document["threads"] == 2
    page = admin.client.get("/config").get_data(as_text=True)
    assert "Saved the criteria as version 1." in page and "v1" in page


def test_invalid_values_show_beside_their_fields(admin):
    document = criteria.current().document
    response = admin.auth.post(
        "/config", form_for(document, 0, threads="many", min_accuracy_retention_percent="150")
    )
    assert response.status_code == 400
    text = response.get_data(as_text=True)
    assert 'id="threads-error"' in text and 'id="min_accuracy_retention_percent-error"' in text
    assert 'value="many"' in text  # what was typed is kept
    assert criteria.current().version == 0


def test_htmx_validation_answers_with_the_form_and_saves_nothing(admin):
    document = criteria.current().document
    token = csrf_from(admin.client, "/config")
    data = {
        **form_for(document, 0, enabled_techniques=["pruning"], forbidden_techniques=["pruning"]),
        "csrf_token": token,
    }
    response = admin.client.post("/config/validate", data=data, headers={"HX-Request": "true"})
    text = response.get_data(as_text=True)
    assert "<form" not in text  # only the error boxes come back, out of band
    assert '<div id="err-forbidden_techniques" hx-swap-oob="true">' in text
    assert 'id="forbidden_techniques-error"' in text
    assert criteria.current().version == 0


def test_a_stale_save_shows_what_changed_instead_of_overwriting(admin):
    document = criteria.current().document
    criteria.save({**document, "description": "saved by someone else"}, 0, admin.user)
    response = admin.auth.post("/config", form_for(document, 0, threads="4"))
    assert response.status_code == 409
    text = response.get_data(as_text=True)
    assert "was saved while you edited version 0" in text
    assert "saved by someone else" in text
    assert criteria.current().document["threads"] == 1
    # The form against version 1: their description (changed meanwhile) and my threads,
    # and no other row (the version number is not a field).
    rows = re.findall(
        r'<tr><td class="mono">(\w+)</td>', text.split('id="stale-save"')[1].split("</table>")[0]
    )
    assert rows == ["description", "threads"]
    assert text.count("changed meanwhile") == 1
    assert 'name="version" value="1"' in text  # the form is now based on version 1


def test_a_stale_save_is_resolved_by_saving_again_once(admin):
    document = criteria.current().document
    criteria.save({**document, "description": "saved by someone else"}, 0, admin.user)
    first = admin.auth.post("/config", form_for(document, 0, threads="4"))
    version = re.search(r'name="version" value="(\d+)"', first.get_data(as_text=True)).group(1)
    again = admin.auth.post("/config", form_for(document, int(version), threads="4"))
    assert again.status_code == 302
    assert criteria.current().version == 2
    assert criteria.current().document["threads"] == 4


def test_field_errors_and_cross_field_conflicts_show_together(admin):
    document = criteria.current().document
    response = admin.auth.post(
        "/config",
        form_for(
            document,
            0,
            threads="0",
            enabled_techniques=["quantization"],
            forbidden_techniques=["quantization"],
        ),
    )
    assert response.status_code == 400
    text = response.get_data(as_text=True)
    assert 'id="threads-error"' in text
    assert 'id="forbidden_techniques-error"' in text and "both enabled and forbidden" in text
    assert criteria.current().version == 0


def test_compare_and_revert(admin):
    document = criteria.current().document
    criteria.save({**document, "threads": 3}, 0, admin.user)
    page = admin.client.get("/config/versions/0").get_data(as_text=True)
    assert "threads" in page and "Restore version 0" in page
    response = admin.auth.post("/config/versions/0/revert", {"version": "1"}, page="/config/versions/0")
    assert response.status_code == 302
    assert criteria.current().version == 2
    assert criteria.current().document["threads"] == 1


def test_operators_cannot_save(operator):
    document = criteria.current().document
    response = operator.auth.post("/config", form_for(document, 0))
    assert response.status_code == 403
