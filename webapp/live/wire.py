"""One client's socket, shared by the writers that may put bytes on it.

A script's stream gets most events straight from the fan-out: the publishing thread
writes the event's frame, made once per process, to every socket that accepts it,
without waking a thread per socket (bench/live_fanout.py: at 5,000 sockets, waking
each one's handler to frame and send the same event was the servers' whole CPU).
The handler still writes what is its own (snapshot, resync, replies, farewell) and
what queued while the socket was busy; simple-websocket's reader thread writes pings
and the closing handshake. This wrapper keeps their frames whole and in order.
"""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
import threading
from collections.abc import Callable

import gevent.socket


class ClientGone(ConnectionError):
    """A write failed because of the client: it left, or stopped reading. (An OSError, so
    simple-websocket's reader thread ends on it as on any socket error.)"""


class ClientStalled(ClientGone):
    """The client took none of a frame for a whole write timeout."""


def _send_within(sock, seconds: float) -> Callable[[bytes], None]:
    """sendall that gives up when the client takes nothing for `seconds`. A client that
    stops reading must not hold the wire's lock for ever: simple-websocket's reader thread
    needs it to send the ping whose missing answer drops such a client."""
    send_nowait = _send_nowait(sock)
    if send_nowait is None:
        return sock.sendall  # a TLS record cannot be resumed at an arbitrary byte
    if isinstance(sock, gevent.socket.socket):

        def writable() -> bool:
            try:
                gevent.socket.wait_write(sock.fileno(), timeout=seconds)
            except TimeoutError:  # gevent's socket.timeout
                return False
            return True

    else:
        poller = select.poll()  # not select(): descriptors pass 1024 with many sockets
        poller.register(sock, select.POLLOUT)

        def writable() -> bool:
            return bool(poller.poll(seconds * 1000))

    def send_all(data) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[send_nowait(view) :]
            except BlockingIOError:
                if not writable():
                    raise ClientStalled(f"the client took nothing for {seconds:g} s") from None

    return send_all


def _send_nowait(sock) -> Callable[[bytes], int] | None:
    """A send that writes what the kernel takes now and never waits for the client."""
    if isinstance(sock, ssl.SSLSocket):
        return None  # TLS records cannot be cut at an arbitrary byte: no shortcut
    if isinstance(sock, gevent.socket.socket):
        # gevent's socket is non-blocking underneath; timeout 0 makes it raise, not wait.
        return lambda data: sock.send(data, 0, timeout=0.0)
    return lambda data: sock.send(data, socket.MSG_DONTWAIT)


class Wire:
    """Stands in for simple-websocket's socket (its `sock`): every send goes through one
    lock, after whatever a shortcut write left unsent."""

    def __init__(self, sock, write_timeout: float):
        self.raw = sock
        # Reentrant: the handler holds it across a batch, and each message it sends
        # through simple-websocket comes back here.
        self.lock = threading.RLock()
        self._leftover = b""
        self._send_nowait = _send_nowait(sock)
        self._sendall = _send_within(sock, write_timeout)

    def __getattr__(self, name):
        return getattr(self.raw, name)  # recv, fileno, close: the reader thread's

    def send(self, data) -> int:
        """simple-websocket's writes: all of it, after anything left over."""
        with self.lock:
            self.flush()
            self._write(data)
        return len(data)

    def flush(self) -> None:
        """Write what a shortcut write left unsent (the caller holds the lock)."""
        if self._leftover:
            leftover, self._leftover = self._leftover, b""
            self._write(leftover)

    def _write(self, data) -> None:
        try:
            self._sendall(data)
        except ClientGone:
            raise
        except OSError as exc:  # broken pipe, reset: the client's doing, not the server's
            raise ClientGone(str(exc) or type(exc).__name__) from exc

    def abort(self) -> None:
        """Cut the connection: the reader thread's recv returns and it ends too."""
        with contextlib.suppress(OSError):  # already gone
            self.raw.shutdown(socket.SHUT_RDWR)

    def write_now(self, frame: bytes, allowed: Callable[..., bool], *args) -> bool | None:
        """Write a whole frame from a thread other than the handler's, if nobody else is
        writing, allowed(*args) (asked under the lock) agrees, and nothing is waiting to go
        before it. False: it was not written, queue it for the handler. None: the client
        took only part of it; the handler must flush the rest (wake it)."""
        if self._send_nowait is None or not self.lock.acquire(blocking=False):
            return False
        try:
            if self._leftover or not allowed(*args):
                return False
            try:
                sent = self._send_nowait(frame)
            except OSError:
                return False  # full (BlockingIOError) or gone: the handler finds out which
            if sent < len(frame):
                self._leftover = bytes(frame[sent:])
                return None
            return True
        finally:
            self.lock.release()
