"""The states and shared names of the l7-http proxy's connections (proxy/http_*.py)."""

from __future__ import annotations

import math

HOLD_LIMIT = 65536  # bytes read ahead of the current exchange before the client is paused
REPLAY_LIMIT = 65536  # request bodies up to this size are kept to replay after a close race
# A lingering close (nginx lingering_close): after an answer given before the request was
# read to its end (400/408/414/431, an early response), read and discard what the client
# still sends, for this long and up to this many bytes, then close. Closing with unread bytes
# makes the kernel send a reset, which can destroy the answer before the client reads it.
LINGER = 2.0
LINGER_BYTES = 1 << 20
INF = math.inf

# ClientConnection states
C_IDLE = 0  # between requests (keep-alive), no byte of the next one yet
C_HEAD = 1  # part of a request head received
C_CONNECT = 2  # request parsed, waiting for an upstream connection
C_BODY = 3  # streaming the request body upstream
C_WAIT = 4  # request sent, response not finished
C_TUNNEL = 5  # after 101: raw bytes both ways
C_LINGER = 6  # answered; discarding the rest of the request body before closing
C_CLOSED = 7

# Upstream states
U_IDLE = 0  # in the pool or between exchanges
U_HEAD = 1  # waiting for (the rest of) a response head
U_BODY = 2
U_TUNNEL = 3
U_CLOSED = 4

# Why a client stops reading
HOLD = 1  # read ahead of the exchange in progress
UPSTREAM_FULL = 2  # the upstream's write buffer is full

# (server label, address, port, TLS, bound source address or "" for the kernel's choice):
# with `source: client` an upstream connection carries one client's address, so it is pooled
# and reused for that client only.
Key = tuple[str, str, int, bool, str]
