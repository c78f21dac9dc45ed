"""PROXY protocol headers (v1 text, v2 binary) as a load balancer sends them, for tests of
`proxy_protocol` listeners."""

from __future__ import annotations

import socket
import struct

BALANCER = "127.0.0.5"  # the trusted proxy: any 127.0.0.x is a local source address on Linux
SIG = b"\r\n\r\n\x00\r\nQUIT\n"


def v1(src: str, sport: int, dport: int = 1883) -> bytes:
    family, dst = ("TCP6", "::1") if ":" in src else ("TCP4", "10.0.0.2")
    return f"PROXY {family} {src} {dst} {sport} {dport}\r\n".encode()


def v2(src: str | None, sport: int = 0, *, tlvs: bytes = b"") -> bytes:
    """A PROXY command for `src` (IPv4 or IPv6), or LOCAL when `src` is None."""
    if src is None:
        return SIG + b"\x20\x00" + struct.pack("!H", len(tlvs)) + tlvs
    family = socket.AF_INET6 if ":" in src else socket.AF_INET
    dst = "::1" if family == socket.AF_INET6 else "10.0.0.2"
    block = socket.inet_pton(family, src) + socket.inet_pton(family, dst) + struct.pack("!HH", sport, 1883)
    fam = b"\x21" if family == socket.AF_INET6 else b"\x11"
    return SIG + b"\x21" + fam + struct.pack("!H", len(block) + len(tlvs)) + block + tlvs
