"""The client-address selector of the SO_REUSEPORT group (core/steering.py), without sockets;
tests/integration/test_steering_kernel.py checks that the kernel picks what worker_index says."""

from __future__ import annotations

import ipaddress

import pytest

from pacslb.core.steering import SKF_NET_OFF, program, worker_index


def test_an_ipv4_program_reads_the_source_address_from_the_network_header() -> None:
    prog = program(4, 2, 32)
    assert prog[0] == (0x20, 0, 0, (SKF_NET_OFF + 12) & 0xFFFFFFFF)
    assert prog[1] == (0x54, 0, 0, 0xFFFFFFFF)
    assert prog[-2] == (0x94, 0, 0, 2)  # mod the workers
    assert prog[-1] == (0x16, 0, 0, 0)  # return A: the socket index


def test_an_ipv6_program_folds_the_four_masked_words() -> None:
    prog = program(6, 3, 56)
    loads = [ins for ins in prog if ins[0] == 0x20]
    assert [ins[3] for ins in loads] == [(SKF_NET_OFF + 8 + 4 * i) & 0xFFFFFFFF for i in range(4)]
    masks = [ins[3] for ins in prog if ins[0] == 0x54]
    assert masks == [0xFFFFFFFF, 0xFFFFFF00, 0, 0]


def test_clients_of_one_persistence_entry_reach_one_worker() -> None:
    # /24 granularity: the whole subnet shares an entry, so it must share a worker
    assert len({worker_index(f"10.1.2.{i}", 4, 24) for i in range(256)}) == 1
    assert len({worker_index(f"2001:db8::{i:x}", 4, 64) for i in range(1, 300)}) == 1


def test_neighbouring_clients_are_spread_evenly() -> None:
    for workers in (2, 3, 4):
        counts = [0] * workers
        for i in range(4096):
            counts[worker_index(str(ipaddress.IPv4Address(0x0A000000 + i)), workers, 32)] += 1
        assert max(counts) - min(counts) < 4096 / workers * 0.1, counts
    counts = [0, 0]
    for i in range(4096):
        counts[worker_index(str(ipaddress.IPv6Address((0x20010DB8 << 96) + i)), 2, 128)] += 1
    assert abs(counts[0] - counts[1]) < 410, counts
    # /56 subnets differing above the last 32 bits still spread (the fold reads every word)
    v6 = {worker_index(f"2001:db8:0:{i:x}00::1", 2, 56) for i in range(64)}
    assert v6 == {0, 1}


@pytest.mark.parametrize(
    ("family", "workers", "granularity", "problem"),
    [
        (5, 2, 32, "family"),
        (4, 0, 32, "workers"),
        (4, 2, 33, "granularity"),
        (6, 2, 129, "granularity"),
    ],
)
def test_bad_arguments_are_named(family: int, workers: int, granularity: int, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        program(family, workers, granularity)
