"""Plain helpers the tests import: users and their clients, forms posted with their CSRF
token, and the steps many API tests take (upload a model, start a session, wait for it).

conftest.py holds the fixtures and is not imported: pytest loads it as `conftest`, so an
import of `tests.conftest` would run a second copy of it."""

from __future__ import annotations

import io
import re
import time
from dataclasses import dataclass
from pathlib import Path

from webapp.services import tokens, users

PASSWORD = "correct-horse-battery"
TEST_SECRET = "test-secret-key-" + "x" * 32
TERMINAL = {"completed", "failed", "cancelled"}

# -- Users and their clients ---------------------------------------------------------------


def make_user(username: str, role: str = "operator", password: str = PASSWORD):
    return users.create(username, password, role)


CSRF_FIELD = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_from(client, path: str) -> str:
    page = client.get(path)
    match = CSRF_FIELD.search(page.get_data(as_text=True))
    assert match, f"no CSRF token on {path}"
    return match.group(1)


class AuthActions:
    def __init__(self, client):
        self._client = client

    def login(self, username: str, password: str = PASSWORD):
        token = csrf_from(self._client, "/login")
        return self._client.post(
            "/login", data={"username": username, "password": password, "csrf_token": token}
        )

    def logout(self):
        token = csrf_from(self._client, "/dashboard")
        return self._client.post("/logout", data={"csrf_token": token})

    def post(self, path: str, data: dict, page: str | None = None):
        """Post a form the way a browser does: with the CSRF token of the page."""
        token = csrf_from(self._client, page or path)
        return self._client.post(path, data={**data, "csrf_token": token})


@dataclass
class RoleClient:
    """A browser logged in as `user` (the admin, operator and viewer fixtures)."""

    client: object
    user: object
    auth: AuthActions


@dataclass
class ApiClient:
    """A script sending `user`'s bearer token with every request."""

    client: object
    user: object
    token: str

    def _headers(self, headers):
        return {"Authorization": f"Bearer {self.token}", **(headers or {})}

    def get(self, path, headers=None, **kwargs):
        return self.client.get(path, headers=self._headers(headers), **kwargs)

    def post(self, path, headers=None, **kwargs):
        return self.client.post(path, headers=self._headers(headers), **kwargs)

    def put(self, path, headers=None, **kwargs):
        return self.client.put(path, headers=self._headers(headers), **kwargs)

    def delete(self, path, headers=None, **kwargs):
        return self.client.delete(path, headers=self._headers(headers), **kwargs)


def api_client_for(app, username: str, role: str = "operator", read_only: bool = False) -> ApiClient:
    """A new user with this role, and a client of `app` sending a fresh personal token of theirs."""
    user = make_user(username, role)
    issued = tokens.create_personal(user, "tests", 30, read_only)
    return ApiClient(app.test_client(), user, issued.access_token)


# -- Steps of the API tests ----------------------------------------------------------------


def upload_file(caller, path: Path, name: str = "model", eval_path: Path | None = None, **fields):
    """POST /api/v1/models with these files; the response, whatever it is."""
    data = {"file": (io.BytesIO(path.read_bytes()), path.name), "name": name, **fields}
    if eval_path is not None:
        data["eval_data"] = (io.BytesIO(eval_path.read_bytes()), "eval.npz")
    return caller.post("/api/v1/models", content_type="multipart/form-data", data=data)


def upload(caller, demo_files, kind="onnx", eval_key="eval"):
    """Upload one of the demo models (with its evaluation data); its model_id."""
    response = upload_file(
        caller, demo_files[kind], f"mlp-{kind}", demo_files[eval_key] if eval_key else None
    )
    assert response.status_code == 201, response.get_json()
    return response.get_json()["model_id"]


def start(caller, model_id, techniques=("quantization",), parameters=None):
    return caller.post(
        "/api/v1/optimization/sessions",
        json={"model_id": model_id, "techniques": list(techniques), "parameters": parameters or {}},
    )


def wait_for(caller, session_id, statuses=TERMINAL, seconds=120):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        body = caller.get(f"/api/v1/optimization/sessions/{session_id}").get_json()
        if body["status"] in statuses:
            return body
        time.sleep(0.2)
    raise AssertionError(f"session {session_id} still {body['status']} after {seconds}s")


# -- Models made on the spot -----------------------------------------------------------------


def tiny_onnx_model(path: Path) -> Path:
    """y = x @ I, x of shape [batch, 4]: an ONNX model every technique can read."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.eye(4, dtype=np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        [weight],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


TINY_INPUTS = [{"name": "x", "shape": [None, 4], "dtype": "float32"}]


def multi_input_onnx_model(path: Path) -> Path:
    """y = ((a + b) @ W) * scale; state_out = state * 2: two per-sample inputs, a
    recurrent-style state with its samples on axis 1, and a scalar."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = np.random.default_rng(0).normal(size=(8, 8)).astype(np.float32)
    two = numpy_helper.from_array(np.array(2.0, dtype=np.float32), "two")
    graph = helper.make_graph(
        [
            helper.make_node("Add", ["a", "b"], ["ab"]),
            helper.make_node("MatMul", ["ab", "w"], ["abw"]),
            helper.make_node("Mul", ["abw", "scale"], ["y"]),
            helper.make_node("Mul", ["state", "two"], ["state_out"]),
        ],
        "multi",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, ["batch", 8]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, ["batch", 8]),
            helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, "batch", 3]),
            helper.make_tensor_value_info("scale", TensorProto.FLOAT, []),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8]),
            helper.make_tensor_value_info("state_out", TensorProto.FLOAT, [2, "batch", 3]),
        ],
        [numpy_helper.from_array(weight, "w"), two],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def multi_input_npz(path: Path, count: int = 20, **override) -> Path:
    import numpy as np

    rng = np.random.default_rng(1)
    arrays = {
        "a": rng.normal(size=(count, 8)).astype(np.float32),
        "b": rng.normal(size=(count, 8)).astype(np.float32),
        "state": rng.normal(size=(2, count, 3)).astype(np.float32),
        "scale": np.array(0.5, dtype=np.float32),
        "sample_axes": np.array([0, 0, 1, -1]),
        **override,
    }
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path
