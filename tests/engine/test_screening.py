"""Hostile files are refused from their bytes, before any loader runs; honest ones pass."""

from __future__ import annotations

import re
import warnings
import zipfile

import numpy as np
import onnx
import pytest

from tests import hostile
from webapp.engine import screening
from webapp.engine.allowed_ops import ATEN_OPS, PRIM_OPS
from webapp.engine.errors import DatasetRejected, ModelRejected

torch = pytest.importorskip("torch")
nn = torch.nn
# TorchScript is deprecated upstream, yet users still upload it: these tests must make it.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*is deprecated:DeprecationWarning")


def _modules():
    """Standard layers of every family an uploaded model is made of."""
    return {
        "mlp": (
            nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Dropout(0.1), nn.Linear(8, 4), nn.Softmax(-1)),
            (torch.randn(2, 8),),
        ),
        "cnn": (
            nn.Sequential(
                nn.Conv2d(3, 4, 3, padding=1),
                nn.BatchNorm2d(4),
                nn.ReLU6(),
                nn.MaxPool2d(2),
                nn.Conv2d(4, 4, 3, groups=2),
                nn.AdaptiveAvgPool2d(1),
                nn.Flatten(),
                nn.Linear(4, 2),
            ),
            (torch.randn(2, 3, 8, 8),),
        ),
        "conv1d": (
            nn.Sequential(
                nn.Conv1d(3, 4, 3),
                nn.GroupNorm(2, 4),
                nn.GELU(),
                nn.AvgPool1d(2),
                nn.ConvTranspose1d(4, 2, 3),
            ),
            (torch.randn(2, 3, 16),),
        ),
        "activations": (
            nn.Sequential(
                nn.SiLU(),
                nn.Hardswish(),
                nn.ELU(),
                nn.Tanh(),
                nn.Sigmoid(),
                nn.Mish(),
                nn.PReLU(),
                nn.LayerNorm(8),
                nn.LogSoftmax(-1),
            ),
            (torch.randn(2, 8),),
        ),
        "lstm": (nn.LSTM(4, 8, batch_first=True), (torch.randn(2, 5, 4),)),
        "gru": (nn.GRU(4, 8, num_layers=2, bidirectional=True), (torch.randn(5, 2, 4),)),
        "transformer": (
            nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, 32, batch_first=True), 2),
            (torch.randn(2, 5, 16),),
        ),
        "upsample": (
            nn.Sequential(nn.PixelShuffle(2), nn.Upsample(scale_factor=2, mode="bilinear")),
            (torch.randn(1, 4, 4, 4),),
        ),
    }


@pytest.mark.slow  # scripts and exports a dozen torch models
@pytest.mark.parametrize("name", sorted(_modules()))
def test_standard_layers_pass_both_screens(name, tmp_path):
    """Can a model built from ordinary PyTorch layers still be uploaded?"""
    module, example = _modules()[name]
    module.eval()
    scripted = tmp_path / f"{name}.pt"
    torch.jit.save(torch.jit.script(module), str(scripted))
    screening.check_torchscript(scripted)
    exported = tmp_path / f"{name}.pt2"
    with warnings.catch_warnings():  # recurrent layers warn about their flat weights
        warnings.simplefilter("ignore", UserWarning)
        torch.export.save(torch.export.export(module, example), str(exported))
    screening.check_exported_program(exported)


@pytest.mark.parametrize("shared", [False, True], ids=["reads", "writes"])
def test_torchscript_mapping_a_file_at_load_is_refused(shared, tmp_path):
    target = tmp_path / "target"
    evil = hostile.torchscript_from_file(target, tmp_path / "evil.pt", shared=shared)
    with pytest.raises(ModelRejected, match="from_file"):
        screening.check_torchscript(evil)
    assert not target.exists()


def test_torchscript_calls_are_judged_whatever_their_spelling(tmp_path):
    """torch.X, torch.ops.aten.X, ops.aten.X and getattr(torch, "X") are one call."""
    base = tmp_path / "base.pt"
    torch.jit.save(torch.jit.script(nn.Linear(2, 2)), str(base))
    spellings = [
        "torch.from_file(p, False, 8)",
        "torch.ops.aten.from_file(p, False, 8)",
        "ops.aten.from_file(p, False, 8)",
        'getattr(torch, "from_file")(p, False, 8)',
        "ops.evil.anything(p)",
        "torch.save(p)",
        "ops.prim.Print(p)",
        "__torch__.torch.classes.evil.Reader(p)",
    ]
    for index, call in enumerate(spellings):
        tampered = tmp_path / f"t{index}.pt"
        with zipfile.ZipFile(base) as source, zipfile.ZipFile(tampered, "w") as copy:
            code = next(n for n in source.namelist() if n.endswith(".py"))
            for info in source.infolist():
                data = source.read(info)
                if info.filename == code:
                    data += f"\ndef leak(p: str) -> Tensor:\n  return {call}\n".encode()
                copy.writestr(info, data)
        with pytest.raises(ModelRejected, match="allowlist"):
            screening.check_torchscript(tampered)


def test_torchscript_pickle_naming_other_globals_is_refused(tmp_path):
    base = tmp_path / "base.pt"
    torch.jit.save(torch.jit.script(nn.Linear(2, 2)), str(base))
    tampered = tmp_path / "tampered.pt"
    with zipfile.ZipFile(base) as source, zipfile.ZipFile(tampered, "w") as copy:
        for info in source.infolist():
            data = source.read(info)
            if info.filename.endswith("/data.pkl"):
                data = b"\x80\x02cos\nsystem\nq\x00X\x02\x00\x00\x00idq\x01\x85q\x02Rq\x03."
            copy.writestr(info, data)
    with pytest.raises(ModelRejected, match="os.system"):
        screening.check_torchscript(tampered)


def test_pt2_with_legacy_pickled_weights_is_refused_unread(demo_files, tmp_path):
    canary = tmp_path / "created-by-unpickling"
    evil = hostile.pt2_with_pickled_weights(demo_files["exported_program"], tmp_path / "evil.pt2", canary)
    with pytest.raises(ModelRejected, match="pickles"):
        screening.check_exported_program(evil)
    assert not canary.exists()


@pytest.mark.parametrize(
    "target",
    [
        "torch.ops.aten.from_file.default",
        "torch.ops.aten.save.default",
        "builtins.open",
        "torch.ops.mylib.read_secret.default",
    ],
)
def test_pt2_graph_calling_outside_the_allowlist_is_refused(target, demo_files, tmp_path):
    evil = hostile.pt2_calling(demo_files["exported_program"], tmp_path / "evil.pt2", target)
    with pytest.raises(ModelRejected, match="allowlist"):
        screening.check_exported_program(evil)


def test_archive_claiming_more_than_the_limit_is_refused(demo_files, tmp_path):
    bomb = hostile.zip_with_padding(demo_files["torchscript"], tmp_path / "bomb.pt", 64 << 20)
    assert bomb.stat().st_size < 1 << 20
    with pytest.raises(ModelRejected, match="unpacks to"):
        screening.check_zip(bomb, 32 << 20)
    screening.check_zip(bomb, 128 << 20)


def test_onnx_external_data_and_custom_domains_are_refused(tmp_path):
    external = hostile.onnx_external_data(tmp_path / "ext.onnx", "/etc/passwd")
    with pytest.raises(ModelRejected, match="external files"):
        screening.check_onnx(onnx.load(str(external), load_external_data=False))
    custom = hostile.onnx_custom_domain(tmp_path / "custom.onnx")
    with pytest.raises(ModelRejected, match="evil.ops"):
        screening.check_onnx(onnx.load(str(custom)))


def test_npz_members_and_sizes_are_judged_before_reading(tmp_path):
    x = np.zeros((4, 8), dtype=np.float32)
    assert screening.check_npz(
        hostile.npz(tmp_path / "ok.npz", x=x, y=np.arange(4)), {"x", "y"}, 1 << 20
    ) == {"x": (4, 8), "y": (4,)}
    unused = hostile.npz(tmp_path / "unused.npz", x=x, padding=np.zeros(1 << 20))
    with pytest.raises(DatasetRejected, match="'padding'"):
        screening.check_npz(unused, {"x", "y"}, 1 << 30)
    claiming = hostile.npz_claiming(tmp_path / "claims.npz", (1 << 20, 1 << 12))
    assert claiming.stat().st_size < 4096
    with pytest.raises(DatasetRejected, match="limit"):
        screening.check_npz(claiming, {"x", "y"}, 1 << 30)


def test_the_allowlist_holds_tensor_maths_only():
    """Every listed operator exists in the pinned torch, none touches files or prints."""
    schemas = torch._C._jit_get_all_schemas()
    aten = {s.name.removeprefix("aten::"): s for s in schemas if s.name.startswith("aten::")}
    prim = {s.name.removeprefix("prim::") for s in schemas if s.name.startswith("prim::")}
    assert set(aten) >= ATEN_OPS
    assert prim >= PRIM_OPS
    assert not {"from_file", "save", "_print"} & ATEN_OPS
    assert "Print" not in PRIM_OPS
    file_arguments = {
        name
        for name, schema in aten.items()
        if name in ATEN_OPS
        for argument in schema.arguments
        if re.search(r"file|path", argument.name)
    }
    assert not file_arguments


def _rewrite(base, target, change):
    """A copy of the zip `base` whose members are what change(name, data) returns (a list of
    (name, data) pairs: none drops the member, two add one)."""
    with (
        warnings.catch_warnings(),  # zipfile warns when a name is written twice: we mean it
        zipfile.ZipFile(base) as source,
        zipfile.ZipFile(target, "w") as copy,
    ):
        warnings.simplefilter("ignore", UserWarning)
        for info in source.infolist():
            for name, data in change(info.filename, source.read(info)):
                copy.writestr(name, data)
    return target


def _scripted(tmp_path):
    base = tmp_path / "base.pt"
    torch.jit.save(torch.jit.script(nn.Linear(2, 2)), str(base))
    with zipfile.ZipFile(base) as archive:
        code = next(n for n in archive.namelist() if n.endswith(".py"))
    return base, code


@pytest.mark.parametrize(
    "body",
    [
        "t = torch\n  f = t.from_file\n  return f(p, False, 8)",
        "o = ops\n  return o.aten.from_file(p, False, 8)",
        "g = getattr\n  return g(torch, 'from_file')(p, False, 8)",
        "pr = print\n  pr(p)\n  return torch.zeros(1)",
    ],
    ids=["torch", "ops", "getattr", "print"],
)
def test_torchscript_names_bound_to_variables_are_refused(body, tmp_path):
    """torch, ops, getattr or print bound to a variable would hide what is called."""
    base, code = _scripted(tmp_path)
    extra = f"\ndef leak(p: str) -> Tensor:\n  {body}\n".encode()
    tampered = _rewrite(base, tmp_path / "t.pt", lambda n, d: [(n, d + extra if n == code else d)])
    with pytest.raises(ModelRejected, match="used as a value"):
        screening.check_torchscript(tampered)


def test_torchscript_archive_tricks_are_refused(tmp_path):
    """A code file our reader would skip (.PY), a member named twice (torch loads the
    first, Python's zipfile the last), or a file torch.jit.save never writes."""
    base, code = _scripted(tmp_path)
    evil = b"def leak(p: str) -> Tensor:\n  return torch.from_file(p, False, 8)\n"
    upper = _rewrite(
        base,
        tmp_path / "u.pt",
        lambda n, d: [(n, d), (n.rsplit("/", 1)[0] + "/x.PY", evil)] if n == code else [(n, d)],
    )
    twice = _rewrite(base, tmp_path / "d.pt", lambda n, d: [(n, evil), (n, d)] if n == code else [(n, d)])
    stray = _rewrite(
        base,
        tmp_path / "s.pt",
        lambda n, d: [(n, d), (n.split("/")[0] + "/lib.so", b"\x7fELF")] if n == code else [(n, d)],
    )
    for archive, words in ((upper, "format does not"), (twice, "twice"), (stray, "format does not")):
        with pytest.raises(ModelRejected, match=words):
            screening.check_torchscript(archive)


def test_pt2_with_a_native_library_is_refused(demo_files, tmp_path):
    """torch.export.load would dlopen a compiled model shipped in the archive."""
    prefix = zipfile.ZipFile(demo_files["exported_program"]).namelist()[0].split("/")[0]

    def add_library(name, data):
        extra = (
            [(f"{prefix}/data/aotinductor/model/model.wrapper.so", b"\x7fELF")]
            if name.endswith("archive_format")
            else []
        )
        return [(name, data), *extra]

    evil = _rewrite(demo_files["exported_program"], tmp_path / "aoti.pt2", add_library)
    with pytest.raises(ModelRejected, match="format does not"):
        screening.check_exported_program(evil)


def test_an_archive_of_too_many_entries_is_refused_from_its_end_record(tmp_path):
    crowded = tmp_path / "crowded.pt"
    with zipfile.ZipFile(crowded, "w") as archive:
        for index in range(screening.MAX_MEMBERS + 1):
            archive.writestr(f"m/data/{index}", b"")
    assert screening.zip_entry_count(crowded) == screening.MAX_MEMBERS + 1
    with pytest.raises(ModelRejected, match="more than"):
        screening.check_zip(crowded, 1 << 30)


@pytest.mark.parametrize("shape", [(10**200, 10**200), (10**400,), (True, 4), (0, 10**200)])
def test_an_npz_header_declaring_an_impossible_shape_is_refused(tmp_path, shape):
    import struct
    import zipfile

    header = f"{{'descr': '<f4', 'fortran_order': False, 'shape': {shape!r}, }}".encode()
    header += b" " * (64 - ((10 + len(header) + 1) % 64)) + b"\n"
    path = tmp_path / "bad.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("x.npy", b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header)
    with pytest.raises(DatasetRejected) as caught:
        screening.check_npz(path, {"x", "y"}, 1 << 30)
    assert "not a plausible array" in caught.value.message
