"""Tell a model's format from its bytes, and refuse what we must never load.

Nothing here unpickles anything. Plain `torch.save` checkpoints (a pickle, or
a zip holding `data.pkl` without TorchScript code) are refused before any
loader sees them: unpickling runs arbitrary code chosen by whoever made the file.
"""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

from . import screening
from .errors import ModelRejected

ONNX = "onnx"
TORCHSCRIPT = "torchscript"
EXPORTED_PROGRAM = "exported_program"
FORMATS = (ONNX, TORCHSCRIPT, EXPORTED_PROGRAM)

# Protocol 2+ pickles start with PROTO (0x80) and the protocol number.
PICKLE_MAGIC = {bytes([0x80, n]) for n in range(2, 6)}

PICKLE_REFUSAL = (
    "This file is a Python pickle (a plain torch.save checkpoint). Pickles can run "
    "arbitrary code when loaded, so Optideck never opens them. Export the model "
    "instead: torch.jit.save(torch.jit.script(model), 'model.pt'), "
    "torch.export.save(torch.export.export(model, example_inputs), 'model.pt2'), "
    "or torch.onnx.export(model, example_inputs, 'model.onnx')."
)


def detect_format(path: Path) -> str:
    """One of FORMATS, judged from the content; raises ModelRejected otherwise."""
    with path.open("rb") as fh:
        head = fh.read(8)
    if not head:
        raise ModelRejected("The file is empty.")
    if head[:2] in PICKLE_MAGIC:
        raise ModelRejected(PICKLE_REFUSAL)
    if zipfile.is_zipfile(path):
        return _zip_format(path)
    # ONNX files are bare protobuf messages with no magic number; the ONNX
    # loader decides (and refuses random bytes) in loading.py.
    return ONNX


def _zip_format(path: Path) -> str:
    if screening.zip_entry_count(path) > screening.MAX_MEMBERS:
        raise ModelRejected(f"The archive holds more than {screening.MAX_MEMBERS:,} files.")
    infos = screening.zip_members(path)
    names = [info.filename for info in infos]
    archive_format = _read_member(path, infos, "archive_format")
    if archive_format is not None:
        if archive_format.strip() == b"pt2":
            return EXPORTED_PROGRAM
        raise ModelRejected("The archive is not a torch.export program (.pt2).")
    has_code = any("/code/" in name for name in names)
    has_constants = any(name.endswith("/constants.pkl") for name in names)
    if has_code and has_constants:
        return TORCHSCRIPT
    if any(name.endswith("data.pkl") for name in names):
        raise ModelRejected(PICKLE_REFUSAL)
    raise ModelRejected("The zip archive is neither a TorchScript nor a torch.export model.")


def _read_member(path: Path, infos: list[zipfile.ZipInfo], suffix: str) -> bytes | None:
    """The first bytes of a small marker member: never more, whatever it claims to hold."""
    for info in infos:
        if info.filename.count("/") == 1 and info.filename.endswith("/" + suffix):
            with screening.open_member(path, info) as member:
                return member.read(16)
    return None


def safe_exported_program_copy(path: Path, target: Path) -> Path:
    """Copy a screened .pt2 archive without its sample inputs.

    screening.check_exported_program refused every pickled payload but these: torch.export
    saves example inputs as a pickle, which a loaded program does not need, and which
    torch.export.load would otherwise unpickle (falling back to a full unpickle).
    """
    try:
        with (
            zipfile.ZipFile(path) as source,
            zipfile.ZipFile(target, "w", compression=zipfile.ZIP_STORED) as copy,
        ):
            for info in source.infolist():
                if "/data/sample_inputs/" in info.filename:
                    copy.writestr(info, b"")
                    continue
                with source.open(info) as src, copy.open(info, "w") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ModelRejected("The .pt2 archive is damaged.") from exc
    return target
