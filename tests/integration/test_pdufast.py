"""The C hot loop's contract (proxy/_pdufast.c relay()) on real TCP sockets and a real pipe:
the stop codes, the bytes moved and the PDU bookkeeping at the edges a peer can choose (a
length of 0 or 0xFFFFFFFF, a header cut short, another PDU type, EOF, the limit).
Addresses: r19's loopback block 127.10.7.0/24."""

from __future__ import annotations

import errno
import os
import socket
import struct
import time
from collections.abc import Iterator

import pytest

from pacslb.proxy import dicom_pumps

pytestmark = pytest.mark.timeout(30)

if not dicom_pumps.COMPILED:
    pytest.skip(
        "pacslb.proxy._pdufast is not built here (`make` builds it)", allow_module_level=True
    )

from pacslb.proxy import _pdufast  # noqa: E402

ADDRESS = "127.10.7.22"
Wire = tuple[socket.socket, socket.socket, int, int]  # sender, receiver, pipe read, pipe write


@pytest.fixture
def wire() -> Iterator[Wire]:
    """(sender, receiver, pipe read end, pipe write end)."""
    with socket.create_server((ADDRESS, 0)) as listener:
        sender = socket.create_connection(listener.getsockname())
        receiver, _ = listener.accept()
    receiver.setblocking(False)
    r, w = os.pipe2(os.O_NONBLOCK)
    try:
        yield sender, receiver, r, w
    finally:
        for fd in (r, w):
            os.close(fd)
        sender.close()
        receiver.close()


def p_data(body: bytes) -> bytes:
    return struct.pack(">BBI", 0x04, 0, len(body)) + body


def settle() -> None:
    time.sleep(0.05)  # the bytes sent are in the receiver's socket (loopback)


def test_whole_pdus_stop_at_an_empty_socket(
    wire: Wire,
) -> None:
    sender, receiver, r, w = wire
    data = p_data(b"") + p_data(b"x" * 1000) + p_data(b"y" * 10)  # a length of 0 is 6 bytes
    sender.sendall(data)
    settle()
    moved, need, seen, stop = _pdufast.relay(receiver.fileno(), w, 0, 1 << 18)
    assert (moved, need, seen, stop) == (len(data), 0, 3, _pdufast.STOP_DRY)
    assert os.read(r, 1 << 16) == data


def test_a_huge_length_is_followed_not_trusted(
    wire: Wire,
) -> None:
    sender, receiver, _, w = wire
    head = struct.pack(">BBI", 0x04, 0, 0xFFFFFFFF)
    sender.sendall(head + b"z" * 100)
    settle()
    moved, need, seen, stop = _pdufast.relay(receiver.fileno(), w, 0, 1 << 18)
    assert (moved, seen, stop) == (106, 1, _pdufast.STOP_DRY)
    assert need == 6 + 0xFFFFFFFF - 106  # the rest of the PDU, whatever the peer sends
    sender.close()
    settle()
    moved, need2, seen, stop = _pdufast.relay(receiver.fileno(), w, need, 1 << 18)
    assert (moved, need2, seen, stop) == (0, need, 0, _pdufast.STOP_EOF)


@pytest.mark.parametrize(
    "tail",
    [b"\x04\x00\x00", struct.pack(">BBI", 0x05, 0, 4) + bytes(4)],
    ids=["header-cut-short", "a-release-rq"],
)
def test_anything_but_a_whole_p_data_header_goes_back_to_python(wire: Wire, tail: bytes) -> None:
    sender, receiver, _, w = wire
    first = p_data(b"a" * 50)
    sender.sendall(first + tail)
    settle()
    moved, need, seen, stop = _pdufast.relay(receiver.fileno(), w, 0, 1 << 18)
    assert (moved, need, seen, stop) == (len(first), 0, 1, _pdufast.STOP_HEADER)
    assert receiver.recv(64, socket.MSG_PEEK) == tail  # left in the socket for Python


def test_the_limit_is_never_passed(wire: Wire) -> None:
    sender, receiver, _, w = wire
    data = p_data(b"b" * 5000)
    sender.sendall(data)
    settle()
    moved, need, seen, stop = _pdufast.relay(receiver.fileno(), w, 0, 1000)
    assert (moved, need, seen, stop) == (1000, len(data) - 1000, 1, _pdufast.STOP_LIMIT)
    moved, need, seen, stop = _pdufast.relay(receiver.fileno(), w, need, 1 << 18)
    assert (moved, need, seen, stop) == (len(data) - 1000, 0, 0, _pdufast.STOP_DRY)


def test_an_error_comes_back_with_what_was_moved(
    wire: Wire,
) -> None:
    sender, receiver, _, _ = wire
    r, w = os.pipe2(os.O_NONBLOCK)
    os.close(r)  # nobody reads the pipe: splice into it fails with EPIPE (SIGPIPE is ignored)
    try:
        sender.sendall(p_data(b"c"))
        settle()
        moved, need, seen, stop = _pdufast.relay(receiver.fileno(), w, 0, 1 << 18)
        assert (moved, need, seen, stop) == (0, 7, 1, -errno.EPIPE)
    finally:
        os.close(w)
