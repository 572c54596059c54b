"""GET /metrics: the Prometheus text format, for an administrator's API token or a
scraper at an address of metrics.allow_from. Also counts every request by route.

Not under /api/: the token is checked here, the way the API checks it, and refusals
carry the API's JSON error body all the same.
"""

from __future__ import annotations

import ipaddress
import logging
import time

from flask import Blueprint, Flask, current_app, g, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .config import ConfigError
from .errors import error_body
from .services import audit, metrics, policy, tokens

log = logging.getLogger("optideck.metrics")

bp = Blueprint("monitoring", __name__)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def allowed_networks(entries: list[str]) -> list[Network]:
    networks = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError as exc:
            raise ConfigError(
                f"metrics.allow_from must list addresses or networks like '10.0.0.0/8', got {entry!r}"
            ) from exc
    return networks


def _from_allowed_address() -> bool:
    networks: list[Network] = current_app.extensions["optideck.metrics_allow_from"]
    if not networks or not request.remote_addr:
        return False
    try:
        address = ipaddress.ip_address(request.remote_addr)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in networks)


def _refuse(status: int, error: str, message: str, headers: dict[str, str] | None = None):
    response = jsonify(error_body(status, error, message))
    response.status_code = status
    response.headers.update(headers or {})
    return response


@bp.get("/metrics")
def scrape():
    if not _from_allowed_address():
        try:
            user, _token = tokens.authenticate(request.headers.get("Authorization"))
        except tokens.TokenRejected as exc:
            return _refuse(401, exc.code, exc.message, {"WWW-Authenticate": 'Bearer realm="optideck"'})
        g.api_user = user  # for the request log
        if not policy.can_administer(user):
            audit.record(
                "get monitoring.scrape",
                user=user,
                resource=request.path,
                allowed=False,
                detail="needs role ['admin']",
            )
            return _refuse(403, "forbidden", "Only an administrator's token may read the metrics.")
    body = generate_latest(metrics.scrape_registry())
    return body, 200, {"Content-Type": CONTENT_TYPE_LATEST, "Cache-Control": "no-store"}


def init_app(app: Flask) -> None:
    settings = app.config["OPTIDECK"]["metrics"]
    app.extensions["optideck.metrics_allow_from"] = allowed_networks(settings["allow_from"])
    if not settings["enabled"]:
        return
    app.register_blueprint(bp)

    @app.after_request
    def count_request(response):
        started = g.get("started")  # requestlog's first hook set it
        # A WebSocket's "request" lasts as long as the connection: no latency to speak of.
        websocket = request.headers.get("Upgrade", "").lower() == "websocket"
        seconds = None if websocket or started is None else time.perf_counter() - started
        rule = request.url_rule.rule if request.url_rule is not None else None
        metrics.count_request(rule, request.method, response.status_code, seconds)
        return response
