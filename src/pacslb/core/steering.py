"""Which proxy worker takes a client's connections: a classic BPF program for SO_REUSEPORT.

The proxy's workers share every listening port through SO_REUSEPORT, and each keeps its own
source-IP persistence table. Left alone, the kernel deals a new connection to a socket of the
group by a hash of the 4-tuple (reuseport_select_sock_by_hash), so the connections of one
client (a new source port each) meet several workers, several tables, and several servers.
This program, attached to the group (SO_ATTACH_REUSEPORT_CBPF: one program per group, the
last attached wins), returns the index of the socket instead, from a hash of the client's
address masked to the persistence granularity, so every connection of a client, and of every
client sharing its persistence entry, reaches the same worker.

How the kernel uses it (net/core/sock_reuseport.c, checked on Linux 6.18 by experiment):
- The group's sockets are an array in the order they called listen() (__reuseport_add_sock
  appends). A socket that closes, or is shutdown(), leaves a hole that the *last* socket fills
  (__reuseport_detach_sock), so a worker that dies moves another worker's socket to its index,
  and its replacement's socket is appended at the end: the survivor's clients then hash to the
  replacement. The control process covers that by handing every worker the persistence entries
  of all (engines/proxy_sticky.py) when one is replaced.
- run_bpf_filter: an index >= the number of sockets means "no choice", and the kernel falls back
  to its 4-tuple hash (e.g. while a worker is down and its socket gone, the clients hashed to
  its index are spread again; the modulus is the configured number of workers).
- The skb's data starts past the TCP header, so the IP header is read at SKF_NET_OFF.
- The program runs on each SYN only (a listener lookup), not per packet.

Pure: the program is a list of (code, jt, jf, k) instructions; `worker_index` computes the same
function in Python for tests.
"""

from __future__ import annotations

import ipaddress

__all__ = ["MULTIPLIER", "Instruction", "program", "worker_index"]

Instruction = tuple[int, int, int, int]  # struct sock_filter: code, jt, jf, k

# classic BPF opcodes (linux/filter.h, linux/bpf_common.h)
_LD_W_ABS = 0x20  # A = *(u32 *)(skb + k)
_ALU_AND_K = 0x54
_ALU_MUL_K = 0x24
_ALU_RSH_K = 0x74
_ALU_XOR_X = 0xAC
_ALU_MOD_K = 0x94
_MISC_TAX = 0x07  # X = A
_RET_A = 0x16
SKF_NET_OFF = -0x100000  # negative offsets read from the network header (linux/filter.h)
_IPV4_SADDR = 12  # struct iphdr.saddr
_IPV6_SADDR = 8  # struct ipv6hdr.saddr

# Fibonacci hashing: the address times 2^32/phi spreads neighbouring addresses (a modality's
# subnet) over the workers; the xor-shift brings the well-mixed high bits down, since `mod N`
# reads the low ones.
MULTIPLIER = 0x9E3779B1


def _mask_words(granularity: int, bits: int) -> list[int]:
    mask = ((1 << granularity) - 1) << (bits - granularity)
    return [(mask >> shift) & 0xFFFFFFFF for shift in range(bits - 32, -1, -32)]


def program(family: int, workers: int, granularity: int) -> list[Instruction]:
    """The selector for a listening socket of `family` (4 or 6) shared by `workers` sockets,
    for a service whose persistence masks client addresses to `granularity` bits."""
    if family not in (4, 6):
        raise ValueError(f"address family must be 4 or 6, got {family}")
    if not 1 <= workers <= 0xFFFF:
        raise ValueError(f"workers must be 1..65535, got {workers}")
    bits = 32 if family == 4 else 128
    if not 0 <= granularity <= bits:
        raise ValueError(f"IPv{family} granularity must be 0..{bits}, got {granularity}")
    base = SKF_NET_OFF + (_IPV4_SADDR if family == 4 else _IPV6_SADDR)
    out: list[Instruction] = []
    # IPv6: the address's four words, each masked, folded by xor into one.
    for i, word_mask in enumerate(_mask_words(granularity, bits)):
        out.append((_LD_W_ABS, 0, 0, (base + 4 * i) & 0xFFFFFFFF))
        out.append((_ALU_AND_K, 0, 0, word_mask))
        if i:
            out.append((_ALU_XOR_X, 0, 0, 0))
        out.append((_MISC_TAX, 0, 0, 0))
    out += [
        (_ALU_MUL_K, 0, 0, MULTIPLIER),
        (_MISC_TAX, 0, 0, 0),
        (_ALU_RSH_K, 0, 0, 16),
        (_ALU_XOR_X, 0, 0, 0),
        (_ALU_MOD_K, 0, 0, workers),
        (_RET_A, 0, 0, 0),
    ]
    return out


def worker_index(client: str, workers: int, granularity: int) -> int:
    """The socket index `program()` returns for `client` (the same arithmetic, in Python)."""
    addr = ipaddress.ip_address(client)
    bits = 32 if addr.version == 4 else 128
    folded = 0
    for shift, word_mask in zip(
        range(bits - 32, -1, -32), _mask_words(granularity, bits), strict=True
    ):
        folded ^= (int(addr) >> shift) & word_mask
    h = (folded * MULTIPLIER) & 0xFFFFFFFF
    h ^= h >> 16
    return h % workers
