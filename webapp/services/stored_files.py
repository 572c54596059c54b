"""The bytes behind models, evaluation sets and artifacts, kept while anything refers to them.

Files are stored once per sha256, so one file can serve several users' models and a
session's artifact at once. Adding and removing a hash both lock its `stored_files` row
inside the caller's transaction: an upload of some bytes and the delete of the last
model using the same bytes wait for each other instead of losing the file. A bucket's
copy is deleted only after the commit, under the lock again (_forget_unused).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.dialects import postgresql, sqlite

from ..extensions import db
from ..tables import ModelMetadata, OptimizationSession, SessionCandidate, StoredFile, utcnow
from . import get
from .storage import Aside

log = logging.getLogger("optideck.storage")


def _lock(sha256: str, size: int | None = None) -> StoredFile:
    """The hash's row, created if need be, locked until the transaction ends. (On SQLite
    the insert alone takes the database's write lock, which serves the same end.)"""
    dialect = db.session.get_bind().dialect.name
    insert = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(StoredFile)
    db.session.execute(
        insert.values(sha256=sha256, size_bytes=size, created_at=utcnow()).on_conflict_do_nothing(
            index_elements=["sha256"]
        )
    )
    return db.session.scalars(
        select(StoredFile)
        .where(StoredFile.sha256 == sha256)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).one()


def keep(spooled: Path, sha256: str, size: int) -> None:
    """Make the store hold these bytes for a reference the caller is adding in this
    transaction. The spooled file is moved in, or dropped when the bytes are there."""
    row = _lock(sha256, size)
    get("blobs").adopt(spooled, sha256)
    row.removed_at = None
    row.size_bytes = size


def references(sha256: str) -> int:
    """Models (not deleted), evaluation sets, artifacts and search candidates that need
    these bytes."""
    models = db.session.scalar(
        select(func.count())
        .select_from(ModelMetadata)
        .where(
            ModelMetadata.deleted_at.is_(None),
            (ModelMetadata.sha256 == sha256) | (ModelMetadata.eval_data_sha256 == sha256),
        )
    )
    artifacts = db.session.scalar(
        select(func.count())
        .select_from(OptimizationSession)
        .where(OptimizationSession.artifact_sha256 == sha256)
    )
    candidates = db.session.scalar(
        select(func.count()).select_from(SessionCandidate).where(SessionCandidate.sha256 == sha256)
    )
    return (models or 0) + (artifacts or 0) + (candidates or 0)


def commit_releasing(hashes: Sequence[str | None]) -> None:
    """Commit the caller's transaction, which dropped references to `hashes`, removing the
    files nothing refers to any more. A file leaves the store only with the commit: it is
    set aside first and put back should the commit fail."""
    db.session.flush()
    blobs = get("blobs")
    aside: list[Aside] = []
    try:
        for sha256 in dict.fromkeys(h for h in hashes if h):
            row = _lock(sha256)
            if references(sha256):
                continue
            aside.append(blobs.set_aside(sha256))
            row.removed_at = utcnow()
        db.session.commit()
    except BaseException:
        db.session.rollback()
        for taken in aside:
            blobs.put_back(taken)
        raise
    for taken in aside:
        blobs.discard(taken)
        if blobs.remote:
            _forget_unused(taken.sha256)
        log.info("removed stored file %s: nothing refers to it", taken.sha256[:12])


def _forget_unused(sha256: str) -> None:
    """Delete a bucket's copy of a file the commit left unreferenced, unless an upload of
    the same bytes took it back meanwhile (the row's lock orders the two). Nothing in the
    bucket moved before the commit, so a failure here leaves an unused object, never a
    model without its file."""
    try:
        row = _lock(sha256)
        if row.removed_at is not None and not references(sha256):
            get("blobs").forget(sha256)
        db.session.commit()
    except Exception:  # the rows are already right: a leftover object costs space only
        db.session.rollback()
        log.warning("stored file %s: could not remove it from the bucket", sha256[:12], exc_info=True)
