"""What a real server (`flask serve`: gunicorn) answers where the app itself never runs, and
on the script socket's plain-HTTP side, as the OpenAPI document says."""

import json
import socket

import pytest

from webapp.testing import Server

ERROR_FIELDS = {"error", "message", "details", "timestamp", "request_id"}


@pytest.fixture(params=["gthread", "gevent"])
def server(request, app, test_database_url, tmp_path):
    """`flask serve` (gunicorn) on this test's database, with either worker class."""
    folder = tmp_path / "server"
    folder.mkdir()
    env = {"OPTIDECK_DATABASE_URL": test_database_url, "OPTIDECK_SERVER_WORKER_CLASS": request.param}
    server = Server(folder, env).start()
    yield server
    server.stop()


def raw(server, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send bytes as they are (no client would send these) and read the whole answer."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as conn:
        conn.sendall(request)
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
            if b"\r\n\r\n" in answer:
                head, _, body = answer.partition(b"\r\n\r\n")
                length = next(
                    (
                        int(line.split(b":")[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length:")
                    ),
                    None,
                )
                if length is not None and len(body) >= length:
                    break
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


def assert_error_body(status, headers, body, expected_status, error):
    assert status == expected_status, body
    assert headers["content-type"].startswith("application/json")
    payload = json.loads(body)
    assert set(payload) == ERROR_FIELDS and payload["error"] == error, payload
    assert headers["x-request-id"] == payload["request_id"]


def test_gunicorns_own_refusals_are_the_json_error_body_under_api(server):
    """Does a script get the API's error body even when gunicorn, not the app, refuses?"""
    too_long = b"a" * 9000
    assert_error_body(
        *raw(server, b"GET /api/v1/models?q=" + too_long + b" HTTP/1.1\r\nHost: x\r\n\r\n"),
        414,
        "uri_too_long",
    )
    status, headers, body = raw(server, b"GET /api/v1/models HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n\r\n")
    assert_error_body(status, headers, body, 400, "validation_error")
    assert "Bad Header" in json.loads(body)["details"]["server"][0]
    # Pages keep gunicorn's own answer.
    status, headers, _ = raw(server, b"GET /models?q=" + too_long + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 414 and headers["content-type"].startswith("text/html")


def test_the_script_socket_answers_plain_http_as_documented(server):
    """Is a plain GET of /api/v1/ws, or a handshake with a bad `since`, told why in the error body?"""
    status, headers, body = raw(server, b"GET /api/v1/ws HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert_error_body(status, headers, body, 426, "upgrade_required")
    assert headers["upgrade"] == "websocket"
    handshake = (
        b"GET /api/v1/ws?since=yesterday HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade, close\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n"
    )
    status, headers, body = raw(server, handshake)
    assert_error_body(status, headers, body, 400, "validation_error")
    assert "since" in json.loads(body)["details"]
