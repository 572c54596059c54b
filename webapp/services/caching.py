"""Cached figures (dashboard statistics, list totals), dropped whenever the data behind
them changes: one generation counter in the cache, bumped by invalidate(), is part of
every key. In memory per process by default, shared by all processes with Redis.
"""

from __future__ import annotations

import logging

from flask import current_app

from ..extensions import cache
from ..tables import User
from . import metrics, policy

log = logging.getLogger("optideck.cache")

GENERATION_KEY = "dashboard:generation"


def invalidate() -> None:
    """Forget every cached figure (a session changed state, a model came or went)."""
    try:
        cache.set(GENERATION_KEY, (cache.get(GENERATION_KEY) or 0) + 1, timeout=0)
    except Exception:  # a cache outage must not fail the action that changed the data
        log.warning("could not invalidate dashboard statistics", exc_info=True)


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


def _scope_key(user: User) -> str:
    return "all" if policy.sees_everything(user) else f"user:{user.id}"
