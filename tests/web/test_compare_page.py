"""Comparing sessions: a table with the differences and the best figures marked, plots, a
picker, and nobody else's sessions."""

import re

from tests.factories import gen_compared, gen_model, gen_session
from tests.helpers import make_user


def table(text: str) -> dict:
    """{row label: (differs, [(cell text, best)])} of the comparison table."""
    rows = {}
    for attrs, label, cells in ROW.findall(text):
        found = [
            (re.sub(r"<[^>]+>|\s+", " ", body).replace(" best", "").strip(), 'class="best"' in a)
            for a, body in CELL.findall(cells)
        ]
        rows[label.strip()] = ("differs" in attrs, found)
    return rows


ROW = re.compile(
    r'<tr( class="differs")?>\s*<th scope="row">([^<]+)(?:<span[^>]*>[^<]*</span>)?</th>(.*?)</tr>', re.S
)
CELL = re.compile(r"<td([^>]*)>(.*?)</td>", re.S)


def test_two_sessions_side_by_side_with_differences_and_best_marked(operator):
    model = gen_model(operator.user, "m")
    a = gen_compared(model, operator.user, 70.0, 50.0, 99.0)
    b = gen_compared(model, operator.user, 40.0, 150.0, 99.8)
    page = operator.client.get(f"/sessions/compare?ids={a.id},{b.id}")
    assert page.status_code == 200
    text = page.get_data(as_text=True)
    assert f"Session #{a.id}" in text and f"Session #{b.id}" in text
    rows = table(text)
    assert rows["Model"] == (False, [("m v1", False), ("m v1", False)])
    assert rows["What was applied"] == (False, [("int8 dynamic", False)] * 2)
    assert rows["Size reduction"] == (True, [("70.00 %", True), ("40.00 %", False)])
    assert rows["Optimized size"] == (True, [("300 bytes", True), ("600 bytes", False)])
    assert rows["Speed-up"] == (True, [("1.50x", False), ("2.50x", True)])
    assert rows["Accuracy retained"] == (True, [("99.00 %", False), ("99.80 %", True)])
    assert text.count('class="point ') == 4  # two sessions, two plots


def test_a_model_alone_compares_its_latest_completed_sessions(operator):
    model, other = gen_model(operator.user, "m"), gen_model(operator.user, "other")
    mine = [gen_compared(model, operator.user, 10.0 * n, 10.0, 99.5) for n in range(1, 4)]
    gen_compared(other, operator.user, 5.0, 5.0, 99.5)
    gen_session(model, operator.user, "running")
    text = operator.client.get(f"/sessions/compare?model_id={model.id}").get_data(as_text=True)
    assert "3 sessions" in text
    for s in mine:
        assert f'href="/sessions/{s.id}">Session #{s.id}' in text


def test_a_single_or_bad_pick_is_explained_and_the_picker_stays(operator):
    model = gen_model(operator.user, "m")
    a = gen_compared(model, operator.user, 10.0, 10.0, 99.5)
    for query in (f"ids={a.id}", "ids=abc", f"ids={a.id},{a.id}", "ids=" + ",".join(map(str, range(1, 9)))):
        page = operator.client.get(f"/sessions/compare?{query}")
        assert page.status_code == 400, query
        text = page.get_data(as_text=True)
        assert 'role="alert"' in text and "Pick sessions" in text
    # Nothing picked yet: the picker, no error.
    page = operator.client.get("/sessions/compare")
    assert page.status_code == 200 and 'role="alert"' not in page.get_data(as_text=True)


def test_another_operators_session_cannot_be_compared(operator):
    stranger = make_user("stranger", "operator")
    model = gen_model(operator.user, "m")
    theirs = gen_compared(gen_model(stranger, "theirs"), stranger, 10.0, 10.0, 99.5)
    mine = gen_compared(model, operator.user, 20.0, 10.0, 99.5)
    page = operator.client.get(f"/sessions/compare?ids={mine.id},{theirs.id}")
    assert page.status_code == 404
    assert "theirs" not in page.get_data(as_text=True)


def test_a_model_page_links_to_comparing_its_sessions_once_two_gen_compared(operator):
    model = gen_model(operator.user, "m")
    gen_compared(model, operator.user, 10.0, 10.0, 99.5)
    link = f'href="/sessions/compare?model_id={model.id}"'
    assert link not in operator.client.get(f"/models/{model.id}").get_data(as_text=True)
    gen_compared(model, operator.user, 20.0, 10.0, 99.5)
    assert link in operator.client.get(f"/models/{model.id}").get_data(as_text=True)


def test_a_model_with_one_completed_session_says_so_and_a_refused_pick_stays_ticked(operator):
    model = gen_model(operator.user, "m")
    sessions = [gen_compared(model, operator.user, 10.0, 10.0, 99.5)]
    page = operator.client.get(f"/sessions/compare?model_id={model.id}").get_data(as_text=True)
    assert "fewer than two completed sessions" in page
    sessions += [gen_compared(model, operator.user, 10.0 + n, 10.0, 99.5) for n in range(6)]
    ids = ",".join(str(s.id) for s in sessions)  # seven: one too many
    page = operator.client.get(f"/sessions/compare?ids={ids}").get_data(as_text=True)
    assert "Pick 2 to 6 sessions" in page
    assert page.count("checked>") == 7
