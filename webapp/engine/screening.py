"""Refuse a hostile file before any loader reads it.

Every check here parses the upload as data (zip directories, JSON, Python syntax trees,
pickle opcodes, .npy headers) and never executes or unpickles any of it. They run in
the sandbox before the loaders (and the cheap ones in the web process too), so a file
that only a loader could expose as hostile still meets the sandbox's walls.
"""

from __future__ import annotations

import ast
import io
import json
import math
import pickletools
import re
import struct
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

from .allowed_ops import ATEN_OPS, PRIM_OPS
from .errors import DatasetRejected, EngineError, ModelRejected, public_message

# A zip's own directory says how large its members unpack; a few kilobytes of zip can
# claim gigabytes. Checked before anything is unpacked.
MAX_MEMBERS = 20_000
# Members are unpacked this much at a time, never whole: a member's directory entry may
# understate what it unpacks to.
CHUNK = 1 << 16
# A member's local header: its signature, then (after 22 bytes the directory repeats) the
# lengths of the name and extra field its data follows.
LOCAL_HEADER = struct.Struct("<4s22xHH")
LOCAL_SIGNATURE = b"PK\x03\x04"
UNREADABLE_DIRECTORY = "its list of files cannot be read"
# What archives and evaluation arrays may unpack to when the caller sets no limit
# (uploads.max_unpacked_bytes).
MAX_UNPACKED_BYTES = 2 << 30

# Operator domains ONNX Runtime itself implements; a node of any other domain needs a
# custom-op library, which is code we would have to load.
ONNX_DOMAINS = {
    "",
    "ai.onnx",
    "ai.onnx.ml",
    "ai.onnx.preview",
    "ai.onnx.preview.training",
    "ai.onnx.training",
    "com.microsoft",
    "com.microsoft.nchwc",
    "com.microsoft.experimental",
}

# The globals a TorchScript archive's pickles may name: how tensors and TorchScript
# objects are rebuilt. TorchScript's unpickler resolves nothing else either; the list is
# a second wall, checked on the opcodes without unpickling.
PICKLE_GLOBALS = {
    ("collections", "OrderedDict"),
    ("torch._utils", "_rebuild_tensor"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch.jit._pickle", "build_intlist"),
    ("torch.jit._pickle", "build_tensorlist"),
    ("torch.jit._pickle", "build_doublelist"),
    ("torch.jit._pickle", "build_boollist"),
    ("torch.jit._pickle", "build_tensor_from_id"),
    ("torch.jit._pickle", "restore_type_tag"),
}
STRING_OPCODES = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING", "BINSTRING"}

# Names TorchScript's serialized code calls without a module: its builtins.
TORCHSCRIPT_BUILTINS = {
    "range",
    "annotate",
    "uninitialized",
    "isinstance",
    "unchecked_cast",
    "int",
    "float",
    "bool",
    "str",
    "len",
    "list",
    "tuple",
    "dict",
    "min",
    "max",
    "abs",
    "enumerate",
    "zip",
    "round",
    "divmod",
    "ord",
    "chr",
    "all",
    "any",
    "sum",
    "sorted",
    "reversed",
    "hash",
}
# What a torch.export graph may call besides aten operators: Python's arithmetic on
# symbolic sizes, and the control-flow operators whose bodies are graphs checked alike.
EXPORT_TARGETS = {
    *(
        f"_operator.{name}"
        for name in (
            "getitem",
            "add",
            "sub",
            "mul",
            "floordiv",
            "truediv",
            "mod",
            "pow",
            "neg",
            "pos",
            "eq",
            "ne",
            "lt",
            "le",
            "gt",
            "ge",
            "and_",
            "or_",
            "not_",
            "abs",
        )
    ),
    *(f"math.{name}" for name in ("ceil", "floor", "trunc", "sqrt")),
    *(
        f"torch.{name}"
        for name in (
            "sym_max",
            "sym_min",
            "sym_float",
            "sym_int",
            "sym_not",
            "sym_ite",
            "sym_sqrt",
            "_assert_async",
        )
    ),
    *(
        f"torch.ops.higher_order.{name}"
        for name in (
            "cond",
            "while_loop",
            "map_impl",
            "scan",
            "wrap_with_set_grad_enabled",
            "wrap_with_autocast",
        )
    ),
}
ATEN_TARGET = re.compile(r"^torch\.ops\.aten\.([A-Za-z0-9_]+)\.[A-Za-z0-9_]+$")

# The files torch.jit.save and torch.export.save write, and nothing else: an archive with
# any other member (a native library torch.export.load would dlopen, code under a name
# our reader skips) is refused.
TORCHSCRIPT_MEMBERS = re.compile(
    r"[^/]+/(version|byteorder|data\.pkl|constants\.pkl|traced_inputs\.pkl|\.data/version"
    r"|\.data/serialization_id|(data|constants|traced_inputs)/\d+|extra/[^/]+"
    r"|code/[\w./-]+\.py(\.debug_pkl)?)"
)
EXPORTED_PROGRAM_MEMBERS = re.compile(
    r"[^/]+/(archive_format|archive_version|byteorder|\.data/version|\.data/serialization_id"
    r"|models/[\w.-]+\.json|data/(weights|constants)/[\w.-]+|data/sample_inputs/[\w.-]+\.pt"
    r"|extra/[^/]+)"
)
# Names serialized TorchScript code may use only as the start of a dotted call (or, for
# getattr, with a constant name): bound to a variable, they would hide what is called.
NOT_VALUES = {"torch", "ops", "getattr", "hasattr", "print", "__torch__"}


def zip_entry_count(path: Path) -> int:
    """The number of members a zip's end record declares, read before anything else: a
    directory of a million entries costs memory and time just to list. Zip64 archives
    (65,535 members or more) answer their 16-bit marker, which is over the limit anyway."""
    with path.open("rb") as fh:
        fh.seek(0, 2)
        size = fh.tell()
        fh.seek(max(0, size - 65_557))  # the end record, and a comment of at most 64 KiB
        tail = fh.read()
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) < at + 12:
        raise _corrupt(ModelRejected, UNREADABLE_DIRECTORY)
    return struct.unpack("<H", tail[at + 10 : at + 12])[0]


def zip_members(path: Path, rejected: type[EngineError] = ModelRejected) -> list[zipfile.ZipInfo]:
    """The archive's directory: every member's name and declared sizes."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise _corrupt(rejected, UNREADABLE_DIRECTORY) from exc


def open_member(path: Path, info: zipfile.ZipInfo, rejected: type[EngineError] = ModelRejected) -> BinaryIO:
    """A member of the zip at `path`, unpacked a chunk at a time as it is read. It refuses
    the archive (raising `rejected`) once the member unpacks to one byte more than its
    directory entry declares; read to its end, also when it unpacks to less or fails its
    checksum. Python's zipfile cuts a lying member to its declared size without a word
    (after inflating up to 2 GiB for one read()), and torch's reader trusts that size."""
    name = _member_name(info)
    if info.flag_bits & 0x1:
        raise rejected(
            f"{_archive(rejected)} holds an encrypted file ({name}); Optideck reads no encrypted files."
        )
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise rejected(
            f"{_archive(rejected)} packs {name} in a way Optideck does not unpack; "
            "only stored and deflated files are accepted."
        )
    file = path.open("rb")
    try:
        file.seek(info.header_offset)
        header = file.read(LOCAL_HEADER.size)
        if len(header) < LOCAL_HEADER.size or not header.startswith(LOCAL_SIGNATURE):
            raise _corrupt(rejected, f"{name} is not where its list of files says")
        _, name_length, extra_length = LOCAL_HEADER.unpack(header)
        file.seek(name_length + extra_length, io.SEEK_CUR)
    except BaseException:
        file.close()
        raise
    return io.BufferedReader(_Unpacking(file, info, rejected), CHUNK)


def unpack_rest(member: BinaryIO) -> None:
    """Read an open_member stream to its end, so its size and checksum are checked too."""
    while member.read(CHUNK):
        pass


def check_members(path: Path, rejected: type[EngineError] = ModelRejected) -> None:
    """Unpack every member, a chunk at a time, and refuse the archive if one unpacks to
    other than its declared size or fails its checksum. Run before a loader that trusts
    the declared sizes (torch's) reads the archive."""
    for info in zip_members(path, rejected):
        with open_member(path, info, rejected) as member:
            unpack_rest(member)


class _Unpacking(io.RawIOBase):
    """The bytes of one member, from its packed data at the file's position. No fileno():
    numpy reads a file that has one from beneath the stream, past every check here."""

    def __init__(self, file: BinaryIO, info: zipfile.ZipInfo, rejected: type[EngineError]):
        super().__init__()
        self._file, self._rejected = file, rejected
        self._name, self._declared, self._crc = _member_name(info), info.file_size, info.CRC
        self._packed_left, self._left, self._running_crc = info.compress_size, info.file_size, 0
        self._inflate = (
            zlib.decompressobj(-zlib.MAX_WBITS) if info.compress_type == zipfile.ZIP_DEFLATED else None
        )
        self._ended = False

    def readable(self) -> bool:
        return True

    def tell(self) -> int:
        """How far into the member the reader is (pickletools asks, to place its errors)."""
        return self._declared - self._left

    def readinto(self, buffer) -> int:
        if self._ended or not len(buffer):
            return 0
        # One byte past the declared size tells a lying member, whatever it would unpack to.
        data = self._unpack(min(len(buffer), CHUNK, self._left + 1))
        if not data:
            self._end()
            return 0
        self._left -= len(data)
        if self._left < 0:
            raise self._corrupt(f"{self._name} unpacks to more than the {self._declared:,} bytes it declares")
        self._running_crc = zlib.crc32(data, self._running_crc)
        buffer[: len(data)] = data
        return len(data)

    def _unpack(self, size: int) -> bytes:
        """At most `size` (at least 1) bytes; none only at the member's end."""
        while True:
            if self._inflate is not None and self._inflate.eof:
                return b""
            packed = self._inflate.unconsumed_tail if self._inflate is not None else b""
            if not packed and self._packed_left > 0:
                packed = self._file.read(min(CHUNK if self._inflate else size, self._packed_left))
                if not packed:
                    raise self._corrupt(f"{self._name} is cut short")
                self._packed_left -= len(packed)
            if self._inflate is None:
                return packed
            try:
                data = self._inflate.decompress(packed, size)
            except zlib.error as exc:
                raise self._corrupt(f"the packed data of {self._name} is damaged") from exc
            if data:
                return data
            if not self._packed_left and not self._inflate.unconsumed_tail and not self._inflate.eof:
                raise self._corrupt(f"{self._name} is cut short")

    def _end(self) -> None:
        self._ended = True
        if self._left:
            raise self._corrupt(
                f"{self._name} unpacks to {self._declared - self._left:,} bytes, "
                f"not the {self._declared:,} it declares"
            )
        if self._running_crc != self._crc:
            raise self._corrupt(f"{self._name} does not match its checksum")

    def _corrupt(self, detail: str) -> EngineError:
        return _corrupt(self._rejected, detail)

    def close(self) -> None:
        self._file.close()
        super().close()


def _member_name(info: zipfile.ZipInfo) -> str:
    """A member's name for users: below the archive's top folder, quoted, not too long."""
    return repr(info.filename.split("/", 1)[-1][:80])


def _archive(rejected: type[EngineError]) -> str:
    return "The evaluation data" if issubclass(rejected, DatasetRejected) else "The archive"


def _corrupt(rejected: type[EngineError], detail: str) -> EngineError:
    return rejected(f"{_archive(rejected)} is corrupt: {detail}.")


def check_zip(path: Path, max_unpacked_bytes: int, members: re.Pattern | None = None) -> None:
    """A zip whose directory promises more than we will unpack, names a member twice (or
    twice but for case), or names one outside the archive, is refused unread. With
    `members`, every member's name must match it (the names its format writes)."""
    if zip_entry_count(path) > MAX_MEMBERS:
        raise ModelRejected(f"The archive holds more than {MAX_MEMBERS:,} files.")
    infos = zip_members(path)
    if len(infos) > MAX_MEMBERS:
        raise ModelRejected(f"The archive holds {len(infos):,} files; at most {MAX_MEMBERS:,} are accepted.")
    names = [info.filename for info in infos]
    if len({name.lower() for name in names}) != len(names):
        # Python's reader takes the last of two members, torch's the first: the one we
        # checked would not be the one that loads.
        raise ModelRejected("The archive names a file twice.")
    for name in names:
        if name.startswith("/") or "\\" in name or "\0" in name or ".." in name.split("/"):
            raise ModelRejected(f"The archive holds a file outside itself: {name[:80]!r}.")
        if members is not None and not members.fullmatch(name):
            raise ModelRejected(f"The archive holds a file its format does not: {name[:80]!r}.")
    if len({name.split("/")[0] for name in names}) > 1:
        raise ModelRejected("The archive's files must all sit in its one top folder.")
    total = sum(info.file_size for info in infos)
    if total > max_unpacked_bytes:
        raise ModelRejected(
            f"The archive unpacks to {total:,} bytes; at most {max_unpacked_bytes:,} are accepted."
        )


def _read(path: Path, info: zipfile.ZipInfo) -> bytes:
    """A member whole, for the parsers that need it so: one of a size check_zip accepted."""
    with open_member(path, info) as member:
        return member.read()


# TorchScript -----------------------------------------------------------------------------


def check_torchscript(path: Path, max_unpacked_bytes: int = MAX_UNPACKED_BYTES) -> None:
    """Refuse a TorchScript archive whose code calls anything but tensor maths, or whose
    pickles name anything but tensors and the archive's own TorchScript classes."""
    check_zip(path, max_unpacked_bytes, TORCHSCRIPT_MEMBERS)
    infos = zip_members(path)
    sources = {info.filename: _read(path, info) for info in infos if info.filename.endswith(".py")}
    if not sources:
        raise ModelRejected("The TorchScript archive holds no code.")
    trees = {}
    for name, text in sources.items():
        try:
            trees[name] = ast.parse(text.decode("utf-8"), filename=Path(name).name)
        except (SyntaxError, UnicodeDecodeError, ValueError, RecursionError, MemoryError) as exc:
            raise ModelRejected(
                f"The TorchScript code in {Path(name).name} cannot be "
                "checked; Optideck refuses code it cannot read."
            ) from exc
    defined = {
        node.name
        for tree in trees.values()
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.ClassDef)
    }
    refused = set()
    for tree in trees.values():
        refused |= _refused_calls(tree, defined)
    if refused:
        raise ModelRejected(
            "The TorchScript model calls operations outside Optideck's allowlist of tensor "
            f"maths: {', '.join(sorted(refused)[:10])}. Files, printing, processes and "
            "custom C++ classes are not allowed in uploaded models."
        )
    for info in infos:
        if info.filename.endswith(".pkl"):
            with open_member(path, info) as member:
                _check_pickle(info.filename, member)
    check_members(path)


def _chain(node: ast.AST) -> list[str] | None:
    """`a.b.c` as ["a", "b", "c"]; None when the chain does not start at a plain name."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    return parts[::-1]


def _refused_calls(tree: ast.AST, defined: set[str]) -> set[str]:
    refused: set[str] = set()
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id in NOT_VALUES:
            parent = parents.get(node)
            dotted = isinstance(parent, ast.Attribute) and parent.value is node
            called = (
                isinstance(parent, ast.Call) and parent.func is node and node.id in ("getattr", "hasattr")
            )
            if not (dotted or called):
                refused.add(f"{node.id} used as a value")
    inner = set()  # attribute nodes that are part of a longer chain, judged with it
    assigned = {
        target.id
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign | ast.For)
        for target in ast.walk(node.targets[0] if isinstance(node, ast.Assign) else node.target)
        if isinstance(target, ast.Name)
    }
    arguments = {
        arg.arg
        for node in ast.walk(tree)
        if isinstance(node, ast.arguments)
        for arg in (*node.args, *node.kwonlyargs)
    }
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node not in inner:
            value = node.value
            while isinstance(value, ast.Attribute):
                inner.add(value)
                value = value.value
            chain = _chain(node)
            if chain is not None:
                problem = _refused_chain(chain)
                if problem:
                    refused.add(problem)
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name) and func.id in ("getattr", "hasattr"):
                problem = _refused_getattr(node)
                if problem:
                    refused.add(problem)
            elif isinstance(func, ast.Name):
                if func.id not in TORCHSCRIPT_BUILTINS | assigned | arguments | defined:
                    refused.add(func.id)
            elif isinstance(func, ast.Attribute):
                chain = _chain(func)
                if chain is None:
                    # (obj).method(...): only methods the archive itself defines.
                    if func.attr not in defined:
                        refused.add(f"method {func.attr}")
                elif chain[0] not in ("torch", "ops", "__torch__") and func.attr not in defined:
                    refused.add(f"method {func.attr}")
            else:
                refused.add("a call through an expression")
    return refused


def _refused_getattr(node: ast.Call) -> str | None:
    """getattr(obj, "name") as TorchScript writes submodule access (Sequential's "0"): only
    with a constant name, and judged like obj.name when obj is torch or ops."""
    if (
        len(node.args) != 2
        or node.keywords
        or not (isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str))
    ):
        return "getattr with a computed name"
    chain = _chain(node.args[0])
    if chain is not None and chain[0] in ("torch", "ops"):
        return _refused_chain([*chain, node.args[1].value]) or None
    return None


def _refused_chain(chain: list[str]) -> str | None:
    """The op a dotted name refers to, if the allowlist does not have it."""
    root = chain[0]
    if root == "torch":
        if len(chain) >= 4 and chain[1] == "ops":
            return _refused_op(chain[2], chain[3])
        return None if len(chain) == 2 and chain[1] in ATEN_OPS else ".".join(chain)
    if root == "ops":
        return _refused_op(chain[1], chain[2]) if len(chain) >= 3 else ".".join(chain)
    if root == "__torch__" and chain[1:3] == ["torch", "classes"]:
        return ".".join(chain)  # custom C++ classes: code outside TorchScript
    return None


def _refused_op(namespace: str, name: str) -> str | None:
    allowed = {"aten": ATEN_OPS, "prim": PRIM_OPS}.get(namespace, frozenset())
    return None if name in allowed else f"{namespace}::{name}"


def _check_pickle(name: str, member: BinaryIO) -> None:
    strings: list[str] = []
    try:
        for opcode, arg, _ in pickletools.genops(member):
            if opcode.name in STRING_OPCODES:
                strings.append(arg if isinstance(arg, str) else repr(arg))
            elif opcode.name == "GLOBAL":
                module, _, attr = str(arg).partition(" ")
                _check_global(name, module, attr)
            elif opcode.name == "STACK_GLOBAL":
                if len(strings) < 2:
                    raise ModelRejected(f"{Path(name).name} is not a TorchScript pickle.")
                _check_global(name, strings[-2], strings[-1])
    except ModelRejected:
        raise
    except Exception as exc:  # pickletools raises ValueError and friends on junk
        raise ModelRejected(f"{Path(name).name} in the archive is damaged.") from exc


def _check_global(member: str, module: str, attr: str) -> None:
    if (module, attr) in PICKLE_GLOBALS:
        return
    if module == "torch" and attr.endswith("Storage"):
        return
    if (module == "__torch__" or module.startswith("__torch__.")) and not module.startswith(
        "__torch__.torch.classes"
    ):
        return  # a TorchScript class of the archive, whose code was checked above
    raise ModelRejected(
        f"{Path(member).name} in the archive would build {module}.{attr}; "
        "uploaded models may hold tensors and TorchScript objects only."
    )


# torch.export programs ---------------------------------------------------------------------


def check_exported_program(path: Path, max_unpacked_bytes: int = MAX_UNPACKED_BYTES) -> None:
    """Refuse a .pt2 archive with any pickled payload, any file torch.export.save does not
    write (native libraries it would load), or a graph calling anything but tensor maths.
    torch.export.load would unpickle such payloads (and falls back to a full unpickle
    when its restricted loader fails), so none may be there at all."""
    check_zip(path, max_unpacked_bytes, EXPORTED_PROGRAM_MEMBERS)
    infos = zip_members(path)
    models = [info for info in infos if "/models/" in info.filename and info.filename.endswith(".json")]
    if len(models) != 1:
        raise ModelRejected("The .pt2 archive must hold exactly one exported program.")
    for info in infos:
        name = info.filename
        if "/data/sample_inputs/" in name:
            continue  # dropped unread before loading (formats.safe_exported_program_copy)
        if name.endswith((".pt", ".pkl", ".pickle", ".pth")):
            raise ModelRejected(
                "The .pt2 archive stores data as pickles (an old or "
                "custom format); re-save it with torch.export.save."
            )
        if name.endswith(("weights_config.json", "constants_config.json")):
            _check_payload_config(_json(path, info))
    program = _json(path, models[0])
    refused = sorted({target for target in _graph_targets(program) if not _allowed_target(target)})
    if refused:
        raise ModelRejected(
            "The exported program calls operations outside Optideck's allowlist of tensor "
            f"maths: {', '.join(refused[:10])}."
        )
    if _has_custom_objects(program):
        raise ModelRejected(
            "The exported program holds custom objects; Optideck accepts tensor programs only."
        )
    check_members(path)


def _json(path: Path, info: zipfile.ZipInfo):
    try:
        return json.loads(_read(path, info))
    except (ValueError, RecursionError) as exc:
        raise ModelRejected(f"{Path(info.filename).name} in the archive is not valid JSON.") from exc


def _check_payload_config(config) -> None:
    entries = config.get("config", {}) if isinstance(config, dict) else None
    if not isinstance(entries, dict):
        raise ModelRejected("The .pt2 archive's payload description is damaged.")
    for fqn, meta in entries.items():
        if not isinstance(meta, dict) or meta.get("use_pickle"):
            raise ModelRejected(
                f"The .pt2 archive stores {str(fqn)[:80]!r} as a pickle; "
                "Optideck accepts only plain tensor payloads."
            )
        if str(meta.get("path_name", "")).startswith(("custom_obj", "opaque_obj")):
            raise ModelRejected(
                f"The .pt2 archive holds a custom object ({str(fqn)[:80]!r}); Optideck accepts only tensors."
            )


def _walk(value) -> Iterator[dict]:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            yield item
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def _graph_targets(program) -> Iterator[str]:
    """The target of every node, in the graph and in every subgraph it nests."""
    for item in _walk(program):
        if "target" in item and "inputs" in item:
            yield str(item["target"])


def _allowed_target(target: str) -> bool:
    match = ATEN_TARGET.match(target)
    if match:
        return match.group(1) in ATEN_OPS
    return target in EXPORT_TARGETS


def _has_custom_objects(program) -> bool:
    return any(item.get("custom_obj_values") or "as_custom_obj" in item for item in _walk(program))


# ONNX ---------------------------------------------------------------------------------------


def check_output(path: Path) -> None:
    """What the trusted side checks a worker's file for (worker._verify), asked of every file
    a step makes, so that one it would refuse costs that step, not the whole session: a
    plain ONNX file of ONNX Runtime's operators that ONNX's checker accepts. (ONNX Runtime
    runs some files the checker refuses: ORT's quantizer can leave an If branch reading a
    tensor it renamed.)"""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
        check_onnx(model)
        onnx.checker.check_model(model)
    except ModelRejected:
        raise
    except Exception as exc:  # protobuf's and the checker's errors have no common base
        raise ModelRejected(f"it is not a valid ONNX model ({public_message(exc)})") from exc


def check_onnx(model) -> None:
    """Refuse an ONNX model that would read files next to it or need a custom-op library."""
    import onnx

    # Only the domains nodes use count: declaring one in opset_import loads nothing.
    allowed = set(ONNX_DOMAINS) | {function.domain for function in model.functions}
    unknown = set()
    tensors = [tensor for graph in _onnx_graphs(model) for tensor in _graph_tensors(graph, onnx)]
    tensors += [
        tensor
        for function in model.functions
        for node in function.node
        for tensor in _node_tensors(node, onnx)
    ]
    for tensor in tensors:
        if tensor.data_location == onnx.TensorProto.EXTERNAL or len(tensor.external_data):
            raise ModelRejected(
                "The ONNX model keeps weights in external files; save it as one file "
                "(onnx.save(..., save_as_external_data=False))."
            )
    for graph in _onnx_graphs(model):
        unknown |= {node.domain for node in graph.node} - allowed
    for function in model.functions:
        unknown |= {node.domain for node in function.node} - allowed
    if unknown:
        raise ModelRejected(
            f"The ONNX model uses operators of the domain(s) {', '.join(sorted(unknown))}, "
            "which need a custom-operator library; only ONNX's own operators and ONNX "
            "Runtime's built-in ones are accepted."
        )


def _onnx_graphs(model):
    """The main graph and every subgraph (If, Loop, Scan bodies), however deep."""
    import onnx

    stack = [model.graph]
    stack.extend(
        node_graph
        for function in model.functions
        for node in function.node
        for node_graph in _attribute_graphs(node, onnx)
    )
    while stack:
        graph = stack.pop()
        yield graph
        for node in graph.node:
            stack.extend(_attribute_graphs(node, onnx))


def _attribute_graphs(node, onnx):
    for attribute in node.attribute:
        if attribute.type == onnx.AttributeProto.GRAPH:
            yield attribute.g
        elif attribute.type == onnx.AttributeProto.GRAPHS:
            yield from attribute.graphs


def _graph_tensors(graph, onnx):
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        yield from _node_tensors(node, onnx)


def _node_tensors(node, onnx):
    """The tensors a node's attributes hold (a Constant's value, say)."""
    for attribute in node.attribute:
        if attribute.type == onnx.AttributeProto.TENSOR:
            yield attribute.t
        elif attribute.type == onnx.AttributeProto.TENSORS:
            yield from attribute.tensors
        elif attribute.type == onnx.AttributeProto.SPARSE_TENSOR:
            yield attribute.sparse_tensor.values
            yield attribute.sparse_tensor.indices
        elif attribute.type == onnx.AttributeProto.SPARSE_TENSORS:
            for sparse in attribute.sparse_tensors:
                yield sparse.values
                yield sparse.indices


# Evaluation data ----------------------------------------------------------------------------


MAX_NPZ_ARRAYS = 32


def check_npz(path: Path, members: set[str] | re.Pattern[str], max_bytes: int) -> dict[str, tuple]:
    """Every member of an evaluation .npz is one we use (named in `members`, or matching it),
    holds plain numbers and fits the limit, judged from the zip directory and the .npy
    headers before any array is read. Returns {name: shape}."""
    return {name: shape for name, (shape, _) in npz_headers(path, members, max_bytes).items()}


def npz_headers(path: Path, members: set[str] | re.Pattern[str], max_bytes: int) -> dict[str, tuple]:
    """check_npz's checks; returns {name: (shape, dtype)}."""
    shapes = {}
    total = 0
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
        most = len(members) if isinstance(members, set) else MAX_NPZ_ARRAYS
        if len(infos) > most:
            raise DatasetRejected(
                f"The evaluation .npz holds {len(infos)} arrays; it may hold only {_listed(members)}."
            )
        for info in infos:
            name = info.filename.removesuffix(".npy")
            known = name in members if isinstance(members, set) else members.fullmatch(name)
            if not known or name in shapes:
                raise DatasetRejected(
                    f"The evaluation .npz holds an array named "
                    f"{name[:60]!r}; it may hold only {_listed(members)}."
                )
            if info.file_size > max_bytes:
                raise DatasetRejected(
                    f"'{name}' unpacks to {info.file_size:,} bytes; the limit is {max_bytes:,}."
                )
            with open_member(path, info, DatasetRejected) as member:
                shape, dtype = _npy_header(member, name)
            if not all(0 <= dimension <= max_bytes for dimension in shape):
                raise DatasetRejected(f"'{name}' declares a size that is not a plausible array's.")
            # Inputs become float32 (or wider) in memory, whatever they are stored as.
            count = math.prod(shape)
            total += count * max(dtype.itemsize, 4)
            if total > max_bytes:
                raise DatasetRejected(
                    f"The evaluation arrays hold more than the limit of {max_bytes:,} bytes."
                )
            shapes[name] = (shape, dtype)
    except DatasetRejected:
        raise
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise DatasetRejected("The evaluation data is not a readable .npz file.") from exc
    return shapes


def _npy_header(member, name: str):
    version = np.lib.format.read_magic(member)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(member)
    elif version in ((2, 0), (3, 0)):
        shape, _, dtype = np.lib.format.read_array_header_2_0(member)
    else:
        raise DatasetRejected(f"'{name}' is not a .npy array.")
    if dtype.hasobject or dtype.kind not in "biuf":
        raise DatasetRejected(f"'{name}' must hold plain numbers, not {dtype}.")
    # A header may declare anything numpy's parser accepts: True, or 10**400.
    if any(type(dimension) is not int for dimension in shape):
        raise DatasetRejected(f"'{name}' declares a size that is not a plausible array's.")
    return tuple(shape), dtype


def _listed(members: set[str] | re.Pattern[str]) -> str:
    if not isinstance(members, set):
        return f"up to {MAX_NPZ_ARRAYS} arrays named after the model's inputs (or 'x'), 'y' and 'sample_axes'"
    return " and ".join(f"'{m}'" for m in sorted(members))
