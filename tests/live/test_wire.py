"""The wire: the fan-out's shortcut writes and the handler's own sends share one socket
without a frame cut in two, reordered or waited on."""

import socket
import threading

import gevent.socket
import pytest

from webapp.live.wire import ClientStalled, Wire

FRAME = b"\x81\x05hello"


@pytest.fixture
def pairs():
    """pairs(factory): a connected (server, client) pair, closed after the test."""
    made = []

    def make(factory=socket.socketpair):
        server, client = factory()
        made.extend((server, client))
        # Small buffers: a few writes fill them, as a client that stopped reading does.
        server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        return server, client

    yield make
    for sock in made:
        sock.close()


def _fill(server) -> None:
    """Write until the kernel takes nothing more."""
    server.setblocking(False)
    try:
        while True:
            server.send(b"x" * 4096)
    except BlockingIOError:
        pass
    finally:
        server.setblocking(True)


def _read(client, count: int) -> bytes:
    data = b""
    while len(data) < count:
        data += client.recv(65536)
    return data


@pytest.mark.parametrize("factory", [socket.socketpair, gevent.socket.socketpair], ids=["threads", "gevent"])
def test_a_frame_is_written_whole_when_the_socket_is_free(pairs, factory):
    server, client = pairs(factory)
    wire = Wire(server, 5.0)
    assert wire.write_now(FRAME, lambda: True) is True
    assert _read(client, len(FRAME)) == FRAME


def test_nothing_is_written_while_the_handler_holds_the_socket_or_says_no(pairs):
    server, client = pairs()
    wire = Wire(server, 5.0)
    assert wire.write_now(FRAME, lambda: False) is False
    held, release = threading.Event(), threading.Event()

    def handler():
        with wire.lock:
            held.set()
            release.wait(5)

    thread = threading.Thread(target=handler)
    thread.start()
    held.wait(5)
    try:
        assert wire.write_now(FRAME, lambda: True) is False  # not waited for: queued instead
    finally:
        release.set()
        thread.join()
    client.setblocking(False)
    with pytest.raises(BlockingIOError):
        client.recv(100)  # nothing reached the client


@pytest.mark.parametrize("factory", [socket.socketpair, gevent.socket.socketpair], ids=["threads", "gevent"])
def test_a_full_socket_is_not_waited_on(pairs, factory):
    server, client = pairs(factory)
    _fill(server)
    wire = Wire(server, 5.0)
    assert wire.write_now(FRAME, lambda: True) is False
    assert wire.write_now(FRAME, lambda: True) is False  # nothing was left half-written


def test_the_rest_of_a_cut_frame_goes_before_anything_else(pairs):
    server, client = pairs()
    wire = Wire(server, 5.0)
    big = b"\x82\x7f" + (1 << 20).to_bytes(8, "big") + bytes(range(256)) * 4096
    assert wire.write_now(big, lambda: True) is None  # the kernel took only part of it
    assert wire.write_now(FRAME, lambda: True) is False  # nothing overtakes the rest
    received = []
    reader = threading.Thread(target=lambda: received.append(_read(client, len(big) + len(FRAME))))
    reader.start()
    assert wire.send(FRAME) == len(FRAME)  # simple-websocket's own write: after the rest
    reader.join(10)
    assert received == [big + FRAME]


def test_the_wire_stands_in_for_the_socket(pairs):
    server, client = pairs()
    wire = Wire(server, 5.0)
    client.sendall(b"ping")
    assert wire.recv(4) == b"ping"
    assert wire.fileno() == server.fileno()
    wire.close()
    assert server.fileno() == -1


@pytest.mark.parametrize("factory", [socket.socketpair, gevent.socket.socketpair], ids=["threads", "gevent"])
def test_a_write_to_a_client_that_stopped_reading_gives_up_and_frees_the_lock(pairs, factory):
    """Before, the handler waited for ever holding the lock, and the reader thread, waiting
    for it to send its ping, could never drop the client (the hostile review's finding)."""
    server, client = pairs(factory)
    _fill(server)
    wire = Wire(server, 0.3)
    with pytest.raises(ClientStalled):
        wire.send(FRAME)
    assert wire.lock.acquire(blocking=False)  # nobody holds it any more
    wire.lock.release()


def test_a_slow_reader_still_gets_everything_within_the_timeout(pairs):
    server, client = pairs()
    wire = Wire(server, 2.0)
    big = bytes(range(256)) * 4096  # 1 MB through 4 KB buffers
    received = []

    def slow_reader():
        data = b""
        while len(data) < len(big):
            data += client.recv(16384)
        received.append(data)

    reader = threading.Timer(0.5, slow_reader)  # takes nothing for half a second first
    reader.start()
    assert wire.send(big) == len(big)
    reader.join(10)
    assert received == [big]


def test_abort_ends_the_reader_s_wait(pairs):
    server, client = pairs()
    wire = Wire(server, 1.0)
    got = []
    reader = threading.Thread(target=lambda: got.append(wire.recv(10)))
    reader.start()
    wire.abort()
    reader.join(5)
    assert got == [b""]
