"""A content-addressed file store: files are named by their sha256, never by the user."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import BinaryIO

CHUNK = 1 << 20


class TooLarge(Exception):
    pass


class BlobStore:
    def __init__(self, root: str):
        self.root = Path(root)

    @property
    def tmp_dir(self) -> Path:
        path = self.root / "tmp"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def path_for(self, sha256: str) -> Path:
        return self.root / "objects" / sha256[:2] / sha256

    def spool(self, stream: BinaryIO, limit: int, suffix: str = "") -> tuple[Path, str, int]:
        """Copy a stream to a temporary file in chunks: (path, sha256, size)."""
        digest = hashlib.sha256()
        size = 0
        fd, name = tempfile.mkstemp(dir=self.tmp_dir, suffix=suffix)
        path = Path(name)
        try:
            with os.fdopen(fd, "wb") as out:
                while chunk := stream.read(CHUNK):
                    size += len(chunk)
                    if size > limit:
                        raise TooLarge()
                    digest.update(chunk)
                    out.write(chunk)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return path, digest.hexdigest(), size

    def adopt(self, tmp_path: Path, sha256: str) -> Path:
        """Move a spooled file into the store; the same bytes are kept once."""
        target = self.path_for(sha256)
        if target.exists():
            tmp_path.unlink(missing_ok=True)
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp_path, target)
        return target

    @staticmethod
    def digest(path: Path) -> tuple[str, int]:
        """(sha256, size) of a file."""
        digest, size = hashlib.sha256(), 0
        with path.open("rb") as fh:
            while chunk := fh.read(CHUNK):
                digest.update(chunk)
                size += len(chunk)
        return digest.hexdigest(), size
