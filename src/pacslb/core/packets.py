"""Ethernet frames for `pacslb doctor`'s probes: an ARP request, a TCP SYN, and parsers for
the answers. Bytes in, bytes out; the raw sockets are in control/doctor.py.

Built by hand (struct) because the probes need what the kernel's sockets will not do: ask
ARP for an address the LB may hold itself, and send a packet for the VIP to one chosen MAC.
IPv4 only: the probes' questions (ARP, a VIP on a real server's loopback) are IPv4 ones.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806
BROADCAST = "ff:ff:ff:ff:ff:ff"
MIN_FRAME = 60  # Ethernet minimum without the FCS; short frames are padded with zeros
ARP_REQUEST, ARP_REPLY = 1, 2
TCP_FIN, TCP_SYN, TCP_RST, TCP_ACK = 0x01, 0x02, 0x04, 0x10
IPPROTO_TCP = 6


def mac_bytes(mac: str) -> bytes:
    parts = mac.split(":")
    if len(parts) != 6:
        raise ValueError(f"{mac!r} is not a MAC address")
    return bytes(int(p, 16) for p in parts)


def mac_text(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


def _ip4(address: str) -> bytes:
    return ipaddress.IPv4Address(address).packed


def _ethernet(dst: str, src: str, ethertype: int, payload: bytes) -> bytes:
    frame = mac_bytes(dst) + mac_bytes(src) + struct.pack("!H", ethertype) + payload
    return frame.ljust(MIN_FRAME, b"\0")


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071): one's complement of the one's complement sum."""
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def arp_request(src_mac: str, src_ip: str, target_ip: str) -> bytes:
    """A broadcast who-has `target_ip` (RFC 826), asked from `src_ip`/`src_mac`."""
    arp = struct.pack("!HHBBH", 1, ETH_P_IP, 6, 4, ARP_REQUEST)
    arp += mac_bytes(src_mac) + _ip4(src_ip) + bytes(6) + _ip4(target_ip)
    return _ethernet(BROADCAST, src_mac, ETH_P_ARP, arp)


@dataclass(frozen=True, slots=True)
class Arp:
    op: int
    sender_mac: str
    sender_ip: str
    target_mac: str
    target_ip: str


def parse_arp(frame: bytes) -> Arp | None:
    """An Ethernet/IPv4 ARP packet, or None for anything else."""
    if len(frame) < 42 or struct.unpack("!H", frame[12:14])[0] != ETH_P_ARP:
        return None
    htype, ptype, hlen, plen, op = struct.unpack("!HHBBH", frame[14:22])
    if (htype, ptype, hlen, plen) != (1, ETH_P_IP, 6, 4):
        return None
    body = frame[22:42]
    return Arp(
        op,
        mac_text(body[0:6]),
        str(ipaddress.IPv4Address(body[6:10])),
        mac_text(body[10:16]),
        str(ipaddress.IPv4Address(body[16:20])),
    )


def tcp_syn(
    src_mac: str,
    dst_mac: str,
    src_ip: str,
    dst_ip: str,
    sport: int,
    dport: int,
    seq: int,
    ident: int = 0,
) -> bytes:
    """An Ethernet frame holding an IPv4 TCP SYN, checksums filled in (RFC 791, RFC 9293)."""
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, 0, 5 << 4, TCP_SYN, 64240, 0, 0)
    pseudo = _ip4(src_ip) + _ip4(dst_ip) + struct.pack("!BBH", 0, IPPROTO_TCP, len(tcp))
    tcp = tcp[:16] + struct.pack("!H", checksum(pseudo + tcp)) + tcp[18:]
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + len(tcp),
        ident,
        0x4000,  # don't fragment
        64,
        IPPROTO_TCP,
        0,
        _ip4(src_ip),
        _ip4(dst_ip),
    )
    header = header[:10] + struct.pack("!H", checksum(header)) + header[12:]
    return _ethernet(dst_mac, src_mac, ETH_P_IP, header + tcp)


@dataclass(frozen=True, slots=True)
class Tcp:
    src_mac: str
    dst_mac: str
    src_ip: str
    dst_ip: str
    sport: int
    dport: int
    flags: int

    @property
    def answers_syn(self) -> bool:
        """A SYN-ACK (something listens) or a RST (nothing does): either way the host took
        the packet as its own."""
        syn_ack = self.flags & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK
        return syn_ack or bool(self.flags & TCP_RST)


def parse_tcp(frame: bytes) -> Tcp | None:
    """An Ethernet/IPv4/TCP frame's addresses, ports and flags, or None for anything else."""
    if len(frame) < 34 or struct.unpack("!H", frame[12:14])[0] != ETH_P_IP:
        return None
    ip = frame[14:]
    ihl = (ip[0] & 0x0F) * 4
    if ip[0] >> 4 != 4 or ip[9] != IPPROTO_TCP or ihl < 20 or len(ip) < ihl + 14:
        return None
    sport, dport = struct.unpack("!HH", ip[ihl : ihl + 4])
    return Tcp(
        mac_text(frame[6:12]),
        mac_text(frame[0:6]),
        str(ipaddress.IPv4Address(ip[12:16])),
        str(ipaddress.IPv4Address(ip[16:20])),
        sport,
        dport,
        ip[ihl + 13],
    )
