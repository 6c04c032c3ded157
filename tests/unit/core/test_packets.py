"""Hand-built frames for `pacslb doctor`'s probes, checked field by field."""

from __future__ import annotations

import struct

from pacslb.core import packets

LB_MAC, RS_MAC = "02:00:00:00:00:02", "02:00:00:00:00:0b"


def test_checksum_matches_rfc_1071_example() -> None:
    # RFC 1071 §3: the words 0001 f203 f4f5 f6f7 sum to ddf2; the checksum is its complement.
    assert packets.checksum(bytes.fromhex("0001f203f4f5f6f7")) == 0xFFFF - 0xDDF2
    assert packets.checksum(b"\x01") == 0xFEFF  # odd length: padded with a zero byte


def test_arp_request_is_a_padded_broadcast_who_has() -> None:
    frame = packets.arp_request(LB_MAC, "198.18.0.2", "198.18.0.100")
    assert len(frame) == packets.MIN_FRAME
    assert frame[:6] == b"\xff" * 6 and frame[6:12] == packets.mac_bytes(LB_MAC)
    arp = packets.parse_arp(frame)
    assert arp == packets.Arp(1, LB_MAC, "198.18.0.2", "00:00:00:00:00:00", "198.18.0.100")


def test_parse_arp_rejects_other_frames() -> None:
    syn = packets.tcp_syn(LB_MAC, RS_MAC, "198.18.0.2", "198.18.0.100", 40000, 104, 1)
    assert packets.parse_arp(syn) is None
    assert packets.parse_arp(b"\0" * 20) is None


def test_tcp_syn_has_valid_ip_and_tcp_checksums() -> None:
    frame = packets.tcp_syn(LB_MAC, RS_MAC, "198.18.0.2", "198.18.0.100", 40000, 104, 7, 9)
    ip, tcp = frame[14:34], frame[34:54]
    assert packets.checksum(ip) == 0  # a header with its checksum sums to zero
    pseudo = ip[12:20] + struct.pack("!BBH", 0, 6, len(tcp))
    assert packets.checksum(pseudo + tcp) == 0
    seg = packets.parse_tcp(frame)
    assert seg == packets.Tcp(
        LB_MAC, RS_MAC, "198.18.0.2", "198.18.0.100", 40000, 104, packets.TCP_SYN
    )
    assert not seg.answers_syn


def test_syn_ack_and_rst_both_answer_a_syn() -> None:
    def answer(flags: int) -> packets.Tcp:
        return packets.Tcp(RS_MAC, LB_MAC, "198.18.0.100", "198.18.0.2", 104, 40000, flags)

    assert answer(packets.TCP_SYN | packets.TCP_ACK).answers_syn
    assert answer(packets.TCP_RST | packets.TCP_ACK).answers_syn
    assert not answer(packets.TCP_ACK).answers_syn


def test_mac_text_round_trips() -> None:
    assert packets.mac_text(packets.mac_bytes("02:AB:00:00:00:0b")) == "02:ab:00:00:00:0b"
