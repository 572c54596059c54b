"""Cached figures (dashboard statistics, list totals) and cached answers (session list
pages, who a bearer token is), dropped whenever the data behind them changes: generation
counters in the cache, part of every key or stored beside every entry, are bumped when
that data changes. Figures: in memory per process by default, shared by all processes
with Redis.

Three generations:

- the *figures'* (GENERATION_KEY), bumped by invalidate(): a session started or changed
  state, a model came or went. Progress alone does not bump it (it changes no count).
- the *lists'* (LIST_GENERATION_KEY): anything a session list row shows or is chosen,
  sorted or named by. Bumped by invalidate() and, after every commit, by a change the
  ORM flushed to a session (its heartbeat alone excepted), a model or a user.
- the *accounts'* (AUTH_GENERATION_KEY): anything that decides what a token may do.
  Bumped after every commit that changed a user or a token (a token's last use and a
  user's last login excepted): revocation, refresh, deactivation, role, password.

The second and third are noted by SQLAlchemy session events rather than by each service,
so a change made anywhere (a service, the CLI, a Celery worker) bumps them; they are
bumped after the commit, so whoever reads the new generation reads the new rows.

List pages and remembered tokens are kept in each process's memory, keyed by the lists'
and accounts' generations, which live in the shared cache; they are used only when that
cache is shared (Redis): without it a change in one process (another gunicorn worker, the
CLI) could not reach the others, and a cached answer could outlive what it says.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from itertools import chain

from flask import current_app, has_app_context
from sqlalchemy import event
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.orm import ORMExecuteState, Session

from ..extensions import cache
from ..tables import ApiToken, ModelMetadata, OptimizationSession, User
from . import metrics, policy

log = logging.getLogger("optideck.cache")

GENERATION_KEY = "dashboard:generation"
LIST_GENERATION_KEY = "sessions:list:generation"
AUTH_GENERATION_KEY = "auth:generation"

# Which generations a change to a row of each table moves on, and the columns whose
# change alone moves none (bookkeeping no list shows and no access decision reads).
_GENERATIONS = {
    OptimizationSession: (LIST_GENERATION_KEY,),
    ModelMetadata: (LIST_GENERATION_KEY,),
    User: (LIST_GENERATION_KEY, AUTH_GENERATION_KEY),
    ApiToken: (AUTH_GENERATION_KEY,),
}
_QUIET_COLUMNS = {
    OptimizationSession: frozenset({"heartbeat_at"}),
    User: frozenset({"last_login_at"}),
    ApiToken: frozenset({"last_used_at"}),
}
_PENDING = "optideck.generations"


def invalidate() -> None:
    """Forget every cached figure and list page (a session changed state, a model came or
    went)."""
    bump(GENERATION_KEY, LIST_GENERATION_KEY)


def bump(*keys: str) -> None:
    for key in keys:
        try:
            _start(key)  # INCR alone would start a missing generation at 1 every time
            # INCR on Redis: two processes bumping at once both count.
            cache.cache.inc(key)
        except Exception:  # a cache outage must not fail the action that changed the data
            # Cached answers then outlive the change by at most their own short lives
            # (a page: stats_cache_seconds; a remembered token: tokens.REMEMBER_SECONDS).
            log.warning("could not move on the cache generation %s", key, exc_info=True)


def _start(key: str) -> None:
    """A missing generation (a fresh, flushed or evicted cache) starts at the clock's
    nanoseconds, never at a value it had before: an answer remembered under an old
    generation must not become valid again."""
    cache.add(key, time.time_ns(), timeout=0)


def shared() -> bool:
    """Whether every process (web workers, Celery workers, the CLI) shares this cache."""
    return current_app.config["CACHE_TYPE"] == "RedisCache"


def generations() -> dict[str, int] | None:
    """The lists' and accounts' generations, in one round trip; None where a cached answer
    must not be used (no shared cache, caching turned off, or the cache failing)."""
    if not shared() or not current_app.config["OPTIDECK"]["dashboard"]["stats_cache_seconds"]:
        return None
    keys = (LIST_GENERATION_KEY, AUTH_GENERATION_KEY)
    try:
        values = cache.get_many(*keys)
        if None in values:
            for key, value in zip(keys, values, strict=True):
                if value is None:
                    _start(key)
            values = cache.get_many(*keys)
    except Exception:
        log.warning("could not read the cache generations", exc_info=True)
        return None
    if any(type(value) is not int for value in values):
        return None
    return dict(zip(("list", "auth"), values, strict=True))


def cached_for_generation(user: User, name: str, compute, keep=lambda value: True):
    """compute()'s value for this user's scope, until the next invalidate() or the TTL
    (a value `keep` refuses is not cached)."""
    if not current_app.config["OPTIDECK"]["dashboard"]["stats_cache_seconds"]:
        return compute()  # caching turned off
    key = f"{name}:{cache.get(GENERATION_KEY) or 0}:{_scope_key(user)}"
    found = cache.get(key)
    if found is not None:
        metrics.CACHE_HITS.labels(metrics.cache_figure(name)).inc()
        return found
    metrics.CACHE_MISSES.labels(metrics.cache_figure(name)).inc()
    fresh = compute()
    if keep(fresh):
        cache.set(key, fresh)
    return fresh


# Pages this process (this app) made lately, least recently used first: key (with the
# generation) -> (until when, bytes). Kept in the process, not in Redis: any query string
# makes a page, and a shared store of them would let one client fill Redis, which also
# holds the queue and the fan-out. Each process makes a page once per generation instead.
PAGES_MAX = 256
_pages_lock = threading.Lock()
# A page missing from the cache is made by one request of this process while the others
# asking for it wait and take its bytes: every change drops every page, and without this
# all the clients reading a list at that moment would each make it again (bench/session_list.py
# with changes: 8 clients, 10 changes a second, a third of the cached throughput).
# Striped by key, so locks are never created or dropped per key.
_MAKING = [threading.Lock() for _ in range(64)]
MAKING_WAIT_SECONDS = 1.0


def cached_page(user: User, name: str, list_generation: int | None, compute) -> bytes:
    """compute()'s bytes (a rendered list page) for this user's scope at this lists'
    generation (from generations(), read before anything the page shows), until that
    generation moves on or stats_cache_seconds pass. Without a generation, compute()
    every time."""
    if list_generation is None:
        return compute()
    key = f"{name}:{list_generation}:{_scope_key(user)}"
    found = _local_page(key)
    if found is None:
        making = _MAKING[hash(key) % len(_MAKING)]
        # Waiters may hold database connections the maker needs: past a second they stop
        # waiting and make the page themselves rather than starve the pool.
        waited = making.acquire(timeout=MAKING_WAIT_SECONDS)
        try:
            found = _local_page(key)
            if found is None:
                metrics.CACHE_MISSES.labels(metrics.cache_figure(name)).inc()
                # Counted from before the reading: a page is never older than its lifetime.
                started = time.monotonic()
                fresh = compute()
                _keep_page(key, fresh, started)
                return fresh
        finally:
            if waited:
                making.release()
    metrics.CACHE_HITS.labels(metrics.cache_figure(name)).inc()
    return found


def _local_pages() -> OrderedDict[str, tuple[float, bytes]]:
    return current_app.extensions.setdefault("optideck.cached_pages", OrderedDict())


def _local_page(key: str) -> bytes | None:
    pages = _local_pages()
    with _pages_lock:
        local = pages.get(key)
        if local is None:
            return None
        if local[0] <= time.monotonic():
            del pages[key]
            return None
        pages.move_to_end(key)
        return local[1]


def _keep_page(key: str, body: bytes, started: float) -> None:
    until = started + current_app.config["OPTIDECK"]["dashboard"]["stats_cache_seconds"]
    pages = _local_pages()
    with _pages_lock:
        pages[key] = (until, body)
        pages.move_to_end(key)
        while len(pages) > PAGES_MAX:
            pages.popitem(last=False)


def _scope_key(user: User) -> str:
    return "all" if policy.sees_everything(user) else f"user:{user.id}"


def _note(session: Session, keys) -> None:
    session.info.setdefault(_PENDING, set()).update(keys)


def _changed(instance) -> bool:
    quiet = _QUIET_COLUMNS.get(type(instance), frozenset())
    return any(attr.history.has_changes() for attr in sa_inspect(instance).attrs if attr.key not in quiet)


@event.listens_for(Session, "after_flush")
def _note_flushed(session: Session, flush_context) -> None:
    # Here the session still lists what the flush wrote, with each attribute's history.
    for instance in chain(session.new, session.deleted):
        _note(session, _GENERATIONS.get(type(instance), ()))
    for instance in session.dirty:
        keys = _GENERATIONS.get(type(instance))
        if keys and _changed(instance):
            _note(session, keys)


@event.listens_for(Session, "do_orm_execute")
def _note_bulk(state: ORMExecuteState) -> None:
    # update(OptimizationSession)... and the like write rows the flush never sees.
    if state.is_update or state.is_delete or state.is_insert:
        for mapper in state.all_mappers:
            _note(state.session, _GENERATIONS.get(mapper.class_, ()))


@event.listens_for(Session, "after_commit")
def _bump_noted(session: Session) -> None:
    # Noted changes rolled back since are bumped anyway at the next commit: a needless
    # bump costs a cache miss, a missed one a stale answer.
    keys = session.info.pop(_PENDING, None)
    if not keys:
        return
    if has_app_context():
        bump(*sorted(keys))
    else:
        # No app, no cache to tell: cached answers elsewhere outlive this change until
        # their own short lives end. Every writer in webapp/ commits in an app context.
        log.warning("a change to %s was committed outside an app context", ", ".join(sorted(keys)))
