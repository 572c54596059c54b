"""How many WebSockets a worker process holds, and for whom: the caps of [live].

An open socket holds one of the worker's server threads (under gevent, one of its
connections) until it closes, so it is counted from the handshake on, before it
authenticates: a stranger's idle socket costs a slot as much as a busy client's.
"""

from __future__ import annotations

import contextlib
import ipaddress
import threading
from collections import Counter
from contextlib import contextmanager

from ..config import connection_capacity

# The htmx ws extension reconnects after 1013, with a growing random delay.
TRY_AGAIN_LATER = 1013
POLICY_VIOLATION = 1008


def client_key(address: str | None) -> str:
    """What the per-address cap counts: the address, or for IPv6 its /64 (one subscriber's
    network; an IPv6 client can pick any of its addresses)."""
    if address and ":" in address:
        with contextlib.suppress(ValueError):
            return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return address or "-"


class Refused(Exception):
    """Close the socket at once with `code`; `reason` goes to the client and the metrics."""

    def __init__(self, reason: str, code: int = POLICY_VIOLATION):
        super().__init__(reason)
        self.reason, self.code = reason, code


def _release(counter: Counter, key) -> None:
    counter[key] -= 1
    if counter[key] <= 0:
        del counter[key]  # a worker sees many addresses over its life; keep only open ones


class Admission:
    """The worker's open sockets: all of them, by client address and by account."""

    def __init__(self, settings: dict):
        live = settings["live"]
        # The rest of the threads serve pages and API calls, whatever the sockets do.
        self.limit = connection_capacity(settings["server"]) - live["reserved_threads"]
        self.per_user = live["max_per_user"]
        self.per_address = live["max_per_address"]
        # Sockets still waiting to authenticate (a stranger's, for all we know) get a pool of
        # their own: however many a flood holds, signed-in clients still find room.
        self.waiting_limit = max(1, self.limit // 4)
        # ... and one address may hold at most half of that pool: a single client cannot
        # fill it and lock every script that authenticates by message out.
        self.waiting_per_address = max(1, self.waiting_limit // 2)
        self._waiting = 0
        self._waiting_addresses: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._open = 0
        self._addresses: Counter[str] = Counter()
        self._users: Counter[int] = Counter()

    @contextmanager
    def ticket(self, address: str, waiting: bool = False):
        """Count a socket from `address` while the block runs; Refused when over a cap.
        `waiting`: it has not authenticated yet (it will by its first message)."""
        address = client_key(address)
        with self._lock:
            if self._open >= self.limit or (waiting and self._waiting >= self.waiting_limit):
                # The server as a whole is full, not this client: it may try again.
                raise Refused("server busy, try again later", TRY_AGAIN_LATER)
            if self.per_address and self._addresses[address] >= self.per_address:
                raise Refused("too many connections from this address")
            if waiting and self._waiting_addresses[address] >= self.waiting_per_address:
                raise Refused("too many unauthenticated connections from this address")
            self._open += 1
            self._waiting += waiting
            self._addresses[address] += 1
            if waiting:
                self._waiting_addresses[address] += 1
        ticket = Ticket(self, waiting, address)
        try:
            yield ticket
        finally:
            with self._lock:
                self._open -= 1
                if ticket.waiting:
                    self._waiting -= 1
                    _release(self._waiting_addresses, address)
                _release(self._addresses, address)
                if ticket.user_id is not None:
                    _release(self._users, ticket.user_id)

    def _claim(self, ticket: Ticket, user_id: int) -> None:
        with self._lock:
            if self.per_user and self._users[user_id] >= self.per_user:
                raise Refused("too many connections for this account")
            self._users[user_id] += 1
            ticket.user_id = user_id
            if ticket.waiting:
                self._waiting -= 1
                _release(self._waiting_addresses, ticket.address)
                ticket.waiting = False


class Ticket:
    """One counted socket; claim() adds it to its account's count once authenticated."""

    def __init__(self, admission: Admission, waiting: bool, address: str):
        self._admission = admission
        self.user_id: int | None = None
        self.waiting = waiting
        self.address = address

    def claim(self, user_id: int) -> None:
        self._admission._claim(self, user_id)
