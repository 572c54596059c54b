"""Hostile uploads through the API: each is refused with a clear 4xx, leaves no file behind
or changed outside the sandbox's scratch folders, never shows a secret byte, and the
server goes on serving."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from tests import hostile
from tests.helpers import TEST_SECRET, api_client_for, upload_file
from webapp.extensions import db
from webapp.tables import ModelMetadata

# Each upload is opened by a sandboxed worker, which is what these tests are about.
pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:`torch.jit.*is deprecated:DeprecationWarning"),
]

SECRET_FILES = ("/etc/passwd",)


@pytest.fixture
def guarded(make_app):
    """An app with small sandbox limits, its instance folder, and an operator's client."""
    app = make_app(
        sandbox={"memory_mb": 1024}, uploads={"max_unpacked_bytes": 32 << 20, "analysis_timeout_seconds": 60}
    )
    with app.app_context():
        instance = Path(app.config["OPTIDECK"]["app"]["instance_dir"])
        yield app, instance, api_client_for(app, "hostile-operator")


def _tree(root: Path, skip: tuple[Path, ...]) -> dict[str, tuple[int, int]]:
    """Every file under root (size, mtime) but the database and the scratch folders."""
    found = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if Path(folder, d) not in skip]
        for name in files:
            path = Path(folder, name)
            if name.startswith("optideck.db"):
                continue
            info = path.lstat()
            found[str(path)] = (info.st_size, info.st_mtime_ns)
    return found


def _secrets(instance: Path) -> list[bytes]:
    found = [TEST_SECRET.encode()]
    for name in SECRET_FILES:
        first = Path(name).read_bytes().splitlines()[0][:16]
        found.append(first)
    key = instance / "secret_key"
    if key.exists():
        found.append(key.read_bytes().strip())
    return found


def _refused(app, instance, caller, tmp_path, path, *, eval_path=None, words=(), **fields):
    """Upload `path`; assert the refusal and everything an attack must not achieve."""
    scratch = (
        Path(app.config["OPTIDECK"]["sandbox"]["work_dir"]),
        Path(app.config["OPTIDECK"]["storage"]["dir"]) / "tmp",
    )
    before = _tree(tmp_path, scratch)
    response = upload_file(caller, path, "hostile", eval_path, **fields)
    body = response.get_data()
    assert response.status_code in (400, 413, 422), response.get_json()
    for word in words:
        assert word in response.get_json()["message"], response.get_json()
    for secret in _secrets(instance):
        assert secret not in body
    assert str(instance).encode() not in body
    assert _tree(tmp_path, scratch) == before
    assert db.session.query(ModelMetadata).count() == 0
    assert caller.client.get("/healthz").status_code == 200
    return response.get_json()


@pytest.mark.parametrize("shared", [False, True], ids=["reads-secret", "writes-file"])
def test_torchscript_mapping_server_files_at_load(guarded, tmp_path, shared):
    app, instance, caller = guarded
    target = instance / "secret_key" if not shared else tmp_path / "planted.pth"
    evil = hostile.torchscript_from_file(target, tmp_path / "evil.pt", size=16, shared=shared)
    _refused(app, instance, caller, tmp_path, evil, words=("from_file",), input_shape="[1, 4]")
    assert not (tmp_path / "planted.pth").exists()


def test_pt2_with_pickled_weights(guarded, demo_files, tmp_path):
    app, instance, caller = guarded
    canary = tmp_path / "created-by-unpickling"
    evil = hostile.pt2_with_pickled_weights(demo_files["exported_program"], tmp_path / "evil.pt2", canary)
    _refused(app, instance, caller, tmp_path, evil, words=("pickle",))
    assert not canary.exists()


def test_pt2_graph_reading_a_file(guarded, demo_files, tmp_path):
    app, instance, caller = guarded
    evil = hostile.pt2_calling(
        demo_files["exported_program"], tmp_path / "evil.pt2", "torch.ops.aten.from_file.default"
    )
    _refused(app, instance, caller, tmp_path, evil, words=("aten.from_file",))


def test_archive_bomb(guarded, demo_files, tmp_path):
    app, instance, caller = guarded
    bomb = hostile.zip_with_padding(demo_files["torchscript"], tmp_path / "bomb.pt", 64 << 20)
    body = _refused(app, instance, caller, tmp_path, bomb, words=("unpacks to",))
    assert body["details"]["file"]


@pytest.mark.parametrize("kind", ["understates-its-size", "damaged-member"])
def test_archive_lying_about_a_member_or_damaged(guarded, tmp_path, kind):
    """Refused as a file the user must fix, in plain words: not an internal error quoting
    Python's, nor after inflating what the archive hides."""
    import torch

    app, instance, caller = guarded
    honest = tmp_path / "honest.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(4, 2)), str(honest))
    if kind == "understates-its-size":
        # 256 MiB of zeros take ~260 KB: werkzeug's test client leaves a body over 500 KB open.
        evil = hostile.zip_understating(honest, tmp_path / "evil.pt", "/constants.pkl", 256)
        words = ("The archive is corrupt: 'constants.pkl' unpacks to more than the",)
    else:
        evil = hostile.zip_damaged(honest, tmp_path / "evil.pt", "/data.pkl", "packed")
        words = ("The archive is corrupt: the packed data of 'data.pkl' is damaged.",)
    body = _refused(app, instance, caller, tmp_path, evil, words=words, input_shape="[1, 4]")
    assert body["error"] == "model_rejected"
    assert body["details"]["file"]


@pytest.mark.parametrize("kind", ["unused-member", "claims-gigabytes", "understates-its-size"])
def test_evaluation_data_bombs(guarded, tmp_path, kind):
    app, instance, caller = guarded
    # Small files: werkzeug's test client spools a body over 500 KB to a file it leaves open.
    if kind == "unused-member":
        data = hostile.npz(
            tmp_path / "eval.npz", x=np.zeros((8, 64), dtype=np.float32), padding=np.zeros(1 << 14)
        )
        words = ("'padding'",)
    elif kind == "claims-gigabytes":
        data = hostile.npz_claiming(tmp_path / "eval.npz", (1 << 22, 64))
        words = ("limit",)
    else:
        honest = hostile.npz(tmp_path / "honest.npz", x=np.zeros((8, 4), dtype=np.float32))
        data = hostile.zip_understating(honest, tmp_path / "eval.npz", "x.npy", 256)
        words = ("The evaluation data is corrupt: 'x.npy' unpacks to more than the",)
    model = hostile.onnx_memory_bomb(tmp_path / "model.onnx", 8)
    body = _refused(app, instance, caller, tmp_path, model, eval_path=data, words=words)
    assert body["details"]["eval_data"]


def test_onnx_memory_bomb_meets_the_memory_cap(guarded, tmp_path):
    """A 300-byte ONNX model asking for 8 GB fails inside its 1 GB sandbox, not the host."""
    app, instance, caller = guarded
    bomb = hostile.onnx_memory_bomb(tmp_path / "bomb.onnx", 1 << 31)
    body = _refused(app, instance, caller, tmp_path, bomb, words=("memory",))
    assert body["error"] == "resource_limit"


@pytest.mark.parametrize("location", ["/etc/passwd", "../../secret_key"])
def test_onnx_external_data_pointing_at_server_files(guarded, tmp_path, location):
    app, instance, caller = guarded
    evil = hostile.onnx_external_data(tmp_path / "ext.onnx", location)
    _refused(app, instance, caller, tmp_path, evil, words=("external files",))


def test_onnx_custom_operator_domain(guarded, tmp_path):
    app, instance, caller = guarded
    evil = hostile.onnx_custom_domain(tmp_path / "custom.onnx")
    _refused(app, instance, caller, tmp_path, evil, words=("evil.ops",))


def test_an_honest_upload_still_works_after_the_attacks(guarded, demo_files, tmp_path):
    app, instance, caller = guarded
    evil = hostile.onnx_custom_domain(tmp_path / "custom.onnx")
    _refused(app, instance, caller, tmp_path, evil)
    response = upload_file(caller, demo_files["onnx"], "honest", demo_files["eval"])
    assert response.status_code == 201, response.get_json()
