"""A content-addressed file store: files are named by their sha256, never by the user.

`BlobStore` keeps them in a folder (`storage.dir`: local disk, or a shared filesystem
mounted on every host). `S3BlobStore` keeps them in an S3-compatible bucket through
boto3, with `storage.dir` as this host's cache of the files it has read: the sandbox
and downloads need a file on disk, and the same bytes never change under one name. A file
leaves the bucket only after the database commit that removed its last reference (a
failure then leaves an unused object, never a model without its file).
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from .errors import ServiceError

CHUNK = 1 << 20
# How long a bucket check's answer is reused.
PROBE_SECONDS = 5.0

log = logging.getLogger("optideck.storage")


class TooLarge(Exception):
    pass


@dataclass
class Aside:
    """A file taken out of the store until the transaction that removed it commits
    (`discard`) or fails (`put_back`)."""

    sha256: str
    local: tuple[Path, Path] | None  # (tombstone, path) of the local copy


class BlobStore:
    def __init__(self, root: str):
        self.root = Path(root)

    @property
    def tmp_dir(self) -> Path:
        path = self.root / "tmp"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def path_for(self, sha256: str) -> Path:
        """Where the file lies on this host, if it is here (see local_copy)."""
        return self.root / "objects" / sha256[:2] / sha256

    def local_copy(self, sha256: str) -> Path:
        """The file on this host's disk; FileNotFoundError when the store lacks it."""
        path = self.path_for(sha256)
        if not path.is_file():
            raise FileNotFoundError(sha256)
        return path

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

    def set_aside(self, sha256: str) -> Aside:
        """Take the file out of the store, reversibly (the caller holds its row's lock)."""
        path = self.path_for(sha256)
        tombstone = path.with_name(path.name + ".removing")
        try:
            os.replace(path, tombstone)
        except FileNotFoundError:
            return Aside(sha256, None)
        return Aside(sha256, (tombstone, path))

    def put_back(self, aside: Aside) -> None:
        if aside.local is not None:
            os.replace(*aside.local)

    def discard(self, aside: Aside) -> None:
        if aside.local is not None:
            aside.local[0].unlink(missing_ok=True)

    def forget(self, sha256: str) -> None:
        """Remove what set_aside could not take back: nothing, for a folder."""

    @property
    def remote(self) -> bool:
        """Whether files live elsewhere than this host's disk (forget() has work to do)."""
        return False

    def check(self) -> str:
        """What /readyz says of the store; OSError when it cannot be written."""
        self.root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=self.root, prefix=".write-check-"):
            pass
        return "writable"

    @staticmethod
    def digest(path: Path) -> tuple[str, int]:
        """(sha256, size) of a file."""
        digest, size = hashlib.sha256(), 0
        with path.open("rb") as fh:
            while chunk := fh.read(CHUNK):
                digest.update(chunk)
                size += len(chunk)
        return digest.hexdigest(), size


class S3BlobStore(BlobStore):
    """Files in an S3-compatible bucket (AWS S3, MinIO, Ceph...), under
    `<prefix>objects/<sha256>`; `root` is this host's cache and spool folder.

    Credentials come from boto3's usual places (AWS_ACCESS_KEY_ID and
    AWS_SECRET_ACCESS_KEY, a profile, an instance role), never from config.toml.
    """

    def __init__(self, root: str, bucket: str, prefix: str = "", endpoint_url: str = "", region: str = ""):
        super().__init__(root)
        import boto3
        from botocore.config import Config

        self.bucket, self.prefix = bucket, prefix

        def client(timeout: float, attempts: int) -> Any:
            return boto3.client(
                "s3",
                endpoint_url=endpoint_url or None,
                region_name=region or None,
                config=Config(
                    connect_timeout=min(timeout, 3),
                    read_timeout=timeout,
                    retries={"mode": "standard", "total_max_attempts": attempts},
                ),
            )

        # A stuck bucket fails a request in about half a minute at most instead of holding
        # a thread (and, during uploads and deletes, a row lock) for minutes.
        self.client = client(15, 2)
        # /readyz answers anyone, often: one quick try, its answer kept a few seconds.
        self._probe = client(2, 1)
        self._probe_lock = threading.Lock()
        self._probed: tuple[float, ServiceError | None] = (-PROBE_SECONDS, None)

    @contextmanager
    def _bucket(self, doing: str) -> Iterator[None]:
        """A bucket that cannot be reached (network, credentials, permissions) is a 503 the
        caller's transaction rolls back on, not an internal error."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except (BotoCoreError, ClientError) as exc:
            log.warning("model store bucket %s: could not %s: %s", self.bucket, doing, exc)
            raise ServiceError(
                503,
                "storage_unavailable",
                "The model store cannot be reached just now; nothing was changed. Try again shortly.",
            ) from exc

    @property
    def remote(self) -> bool:
        return True

    def key_for(self, sha256: str) -> str:
        return f"{self.prefix}objects/{sha256}"

    def _exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        with self._bucket("look up a file"):
            try:
                self.client.head_object(Bucket=self.bucket, Key=key)
            except ClientError as exc:
                if _missing(exc):
                    return False
                raise
        return True

    def adopt(self, tmp_path: Path, sha256: str) -> Path:
        """Upload a spooled file unless the bucket has these bytes; keep it as this host's
        cached copy. (Under its row's lock: no removal of the same bytes runs meanwhile.)"""
        key = self.key_for(sha256)
        if not self._exists(key):
            with self._bucket("store a file"):
                self.client.upload_file(str(tmp_path), self.bucket, key)
        return super().adopt(tmp_path, sha256)

    def local_copy(self, sha256: str) -> Path:
        """This host's cached copy, downloaded first when it has none."""
        from botocore.exceptions import ClientError

        path = self.path_for(sha256)
        if path.is_file():
            return path
        fd, name = tempfile.mkstemp(dir=self.tmp_dir, suffix=".download")
        os.close(fd)
        try:
            with self._bucket("read a file"):
                try:
                    self.client.download_file(self.bucket, self.key_for(sha256), name)
                except ClientError as exc:
                    if _missing(exc):
                        raise FileNotFoundError(sha256) from None
                    raise
            if self.digest(Path(name))[0] != sha256:
                log.error("model store bucket %s: %s does not hold its bytes", self.bucket, sha256)
                raise ServiceError(503, "storage_unavailable", "A file in the model store is damaged.")
        except BaseException:
            Path(name).unlink(missing_ok=True)
            raise
        path.parent.mkdir(parents=True, exist_ok=True)
        os.replace(name, path)  # two hosts' readers may race: the same bytes either way
        return path

    def forget(self, sha256: str) -> None:
        """Delete the object (after the commit that removed its last reference, under the
        row's lock again: see stored_files.commit_releasing)."""
        with self._bucket("remove a file"):
            self.client.delete_object(Bucket=self.bucket, Key=self.key_for(sha256))

    def check(self) -> str:
        super().check()
        with self._probe_lock:  # one probe at a time; the others wait for its answer
            checked, problem = self._probed
            if time.monotonic() - checked >= PROBE_SECONDS:
                problem = None
                try:
                    with self._bucket("check the bucket"):
                        self._probe.head_bucket(Bucket=self.bucket)
                except ServiceError as exc:
                    problem = exc
                self._probed = (time.monotonic(), problem)
        if problem is not None:
            raise problem
        # Not the bucket's name: /readyz answers anyone.
        return "bucket reachable"


def _missing(exc: Any) -> bool:
    """Is a botocore ClientError S3's "no such key"?"""
    return exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound")


def for_config(config: dict) -> BlobStore:
    """The store `storage.backend` names."""
    from ..config import ConfigError

    settings = config["storage"]
    if settings["backend"] == "local":
        return BlobStore(settings["dir"])
    if settings["backend"] == "s3":
        if not settings["s3_bucket"]:
            raise ConfigError('storage.backend = "s3" needs storage.s3_bucket')
        return S3BlobStore(
            settings["dir"],
            settings["s3_bucket"],
            prefix=settings["s3_prefix"],
            endpoint_url=settings["s3_endpoint_url"],
            region=settings["s3_region"],
        )
    raise ConfigError(f'storage.backend must be "local" or "s3", not {settings["backend"]!r}')
