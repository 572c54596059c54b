"""Open streams re-check whom they serve, with one batched read per worker.

A stream is authorised when it opens; later its account may be deactivated, its
role changed, its browser sessions ended (logout) or its token revoked or
expired. Every `live.recheck_seconds` one thread per worker reads the accounts
and tokens behind all its open streams, two queries whatever their number, and
hands each stream what it found. A change committed in this process
(services.signals.access_changed) wakes the thread at once; one made by another process is
seen at the next read.
"""

from __future__ import annotations

import logging
import threading

from flask import Flask
from sqlalchemy import select

from ..extensions import db
from ..services.signals import access_changed
from ..tables import ApiToken, User, utcnow

log = logging.getLogger("optideck.live")


class AccessWatch:
    def __init__(self, app: Flask):
        self.app = app
        self.interval = app.config["OPTIDECK"]["live"]["recheck_seconds"]
        self._streams: set = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        access_changed.connect(self._changed, sender=app)

    def _changed(self, _sender) -> None:
        self._wake.set()

    def add(self, stream) -> None:
        with self._lock:
            self._streams.add(stream)
            # The thread runs only while there are streams to watch.
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="optideck-access-watch", daemon=True)
                self._thread.start()

    def discard(self, stream) -> None:
        with self._lock:
            self._streams.discard(stream)

    def _run(self) -> None:
        while True:
            self._wake.wait(self.interval)
            self._wake.clear()
            with self._lock:
                streams = list(self._streams)
                if not streams:
                    self._thread = None
                    return
            with self.app.app_context():
                try:
                    self.review(streams)
                except Exception:
                    # The thread is what ends revoked streams: it must outlive a failed read.
                    log.exception("re-checking the accounts of %d live streams failed", len(streams))
                finally:
                    db.session.remove()

    def review(self, streams: list) -> None:
        user_ids = {stream.user_id for stream in streams}
        token_ids = {stream.token_id for stream in streams if stream.token_id is not None}
        accounts = {
            row.id: row
            for row in db.session.execute(
                select(User.id, User.active, User.role, User.session_nonce).where(User.id.in_(user_ids))
            )
        }
        tokens = (
            {
                row.id: row
                for row in db.session.execute(
                    select(ApiToken.id, ApiToken.revoked_at, ApiToken.expires_at, ApiToken.token_hash).where(
                        ApiToken.id.in_(token_ids)
                    )
                )
            }
            if token_ids
            else {}
        )
        now = utcnow()
        for stream in streams:
            stream.review(accounts.get(stream.user_id), tokens.get(stream.token_id), now)
