"""Start, follow and cancel optimization sessions; download their models."""

from __future__ import annotations

from flask import Response, current_app, g, jsonify, send_file
from flask.views import MethodView

from ..auth.guards import roles_required
from ..services import caching, optimization, policy, session_compare, session_query, session_summaries
from . import ApiBlueprint
from .schemas import (
    ArtifactQuerySchema,
    ErrorSchema,
    SessionCompareQuerySchema,
    SessionComparisonSchema,
    SessionDetailSchema,
    SessionEventListSchema,
    SessionListSchema,
    SessionStartSchema,
)

blp = ApiBlueprint("Sessions", __name__, description="Optimization sessions.")
# One instance for every request: given the class, webargs builds a schema per request
# (a fifth of a cached list page's time).
LIST_QUERY = session_query.SessionQuerySchema()


def _detail(session) -> dict:
    return {
        **session_summaries.summary(session),
        "parameters": session.parameters,
        "criteria": session.criteria,
        "criteria_version": session.criteria_version,
        "plan": session.plan,
        "results": session.results,
    }


@blp.route("/optimization/sessions", methods=["GET"])
@blp.doc(operationId="listSessions")
@blp.arguments(LIST_QUERY, location="query")
@blp.response(200, SessionListSchema)
@blp.alt_response(400, schema=ErrorSchema, description="A parameter is invalid; `details` names it.")
def list_sessions(filters):
    """List the sessions you may see: filter by status, model, owner and creation date;
    sort by created, updated, size or speed; page with skip and limit (at most 100)."""

    def render() -> bytes:
        page = session_query.search(g.api_user, filters)
        # Already plain values: dumping 50 rows through the schema took longer than reading
        # them (bench/session_list.py). The schema still documents the response, and a test
        # holds the two together.
        page["sessions"] = [session_summaries.jsonable(s) for s in page["sessions"]]
        return jsonify(page).get_data()

    # With Redis, this process answers every caller of the same scope and filters with the
    # same bytes until any row of any list changes (the lists' generation, read with the
    # token's); services/caching.py.
    body = caching.cached_page(g.api_user, session_query.page_key(filters), g.get("list_generation"), render)
    return current_app.response_class(body, mimetype=current_app.json.mimetype)


@blp.route("/optimization/sessions/export.csv", methods=["GET"])
@blp.doc(
    operationId="exportSessionsCsv",
    responses={200: {"content": {"text/csv": {"schema": {"type": "string"}}}}},
)
@blp.arguments(LIST_QUERY, location="query")
@blp.response(200, description="One row per session, with a header row.", content_type="text/csv")
@blp.alt_response(400, schema=ErrorSchema, description="A parameter is invalid; `details` names it.")
def export_sessions(filters):
    """The sessions list with the same filters and order as a CSV file: every matching
    session (skip and limit are ignored), at most 10,000."""
    return Response(
        session_query.export_csv(g.api_user, filters),
        mimetype="text/csv",
        headers={"Content-Disposition": 'attachment; filename="sessions.csv"'},
    )


@blp.route("/optimization/sessions", methods=["POST"])
@roles_required(*policy.CREATORS)
@blp.doc(operationId="startSession")
@blp.arguments(SessionStartSchema)
@blp.response(202, SessionDetailSchema)
@blp.alt_response(404, schema=ErrorSchema, description="No such model.")
@blp.alt_response(409, schema=ErrorSchema, description="The model was deleted.")
@blp.alt_response(422, schema=ErrorSchema, description="The techniques do not fit this model.")
def start_session(body):
    """Start a session: it is queued and runs in a background worker."""
    session = optimization.start(
        g.api_user, body["model_id"], body["techniques"], body["parameters"], body.get("budget_minutes")
    )
    return _detail(session)


# A path of its own under /optimization/sessions: <int:session_id> never matches "compare".
@blp.route("/optimization/sessions/compare")
class SessionComparison(MethodView):
    @blp.doc(operationId="compareSessions")
    @blp.arguments(SessionCompareQuerySchema, location="query")
    @blp.response(200, SessionComparisonSchema)
    @blp.alt_response(
        400,
        schema=ErrorSchema,
        description="Not two to six session ids (or model_id has fewer than two completed "
        "sessions); `details` names `ids`.",
    )
    @blp.alt_response(404, schema=ErrorSchema, description="A session you may not see, or none such.")
    def get(self, query):
        """Sessions side by side, as on the compare page: one row per figure, one cell per
        session, the differences and each row's best figure marked. `model_id` alone
        compares that model's latest completed sessions."""
        ids = session_compare.chosen_ids(g.api_user, query.get("ids") or [], query.get("model_id"))
        return session_compare.compare(g.api_user, ids)


@blp.route("/optimization/sessions/<int:session_id>")
class SessionItem(MethodView):
    @blp.doc(operationId="getSession")
    @blp.response(200, SessionDetailSchema)
    @blp.alt_response(404, schema=ErrorSchema)
    def get(self, session_id):
        """One session: status, progress, plan, criteria and results."""
        return _detail(optimization.get_for(g.api_user, session_id))


@blp.route("/optimization/sessions/<int:session_id>/cancel", methods=["POST"])
@roles_required(*policy.CREATORS)
@blp.doc(operationId="cancelSession")
@blp.response(202, SessionDetailSchema)
@blp.alt_response(409, schema=ErrorSchema, description="The session already finished.")
def cancel_session(session_id):
    """Cancel a queued or running session (a running one stops within seconds)."""
    session = optimization.get_for(g.api_user, session_id)
    return _detail(optimization.cancel(session, g.api_user))


@blp.route("/optimization/sessions/<int:session_id>/events")
@blp.doc(operationId="listSessionEvents")
@blp.response(200, SessionEventListSchema)
@blp.alt_response(404, schema=ErrorSchema)
def session_events(session_id):
    """The session's timeline: steps started, kept, rolled back, and the outcome."""
    session = optimization.get_for(g.api_user, session_id)
    return {"session_id": session.id, "events": optimization.events(session)}


@blp.route("/optimization/sessions/<int:session_id>/artifact")
@blp.doc(
    operationId="downloadSessionArtifact",
    responses={
        200: {"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}
    },
)
@blp.response(200, description="The optimized model (ONNX).", content_type="application/octet-stream")
@blp.arguments(ArtifactQuerySchema, location="query")
@blp.alt_response(400, schema=ErrorSchema, description="`candidate` is not a whole number.")
@blp.alt_response(
    404, schema=ErrorSchema, description="Not completed, no such session or no such kept candidate."
)
def session_artifact(query, session_id):
    """Download the optimized model of a completed session; for a search, any kept
    candidate with `?candidate=<index>`."""
    session = optimization.get_for(g.api_user, session_id)
    candidate = query.get("candidate")
    path = optimization.artifact_path(session, candidate)
    return send_file(
        path,
        mimetype="application/octet-stream",
        as_attachment=True,
        download_name=optimization.artifact_download_name(session, candidate),
    )
