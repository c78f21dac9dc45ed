"""HAProxy's PROXY protocol, versions 1 and 2: the header a load balancer sends before the client's bytes.

Behind a balancer every connection comes from the balancer's address; the header carries the client's
own. This module only parses (pure functions over bytes, no I/O); engine/proxy_listener.py reads the
header off a socket and decides whom to believe. Written to the specification
(haproxy doc/proxy-protocol.txt, sections 2.1 and 2.2):

- Version 1: one US-ASCII line `PROXY TCP4|TCP6|UNKNOWN ...\\r\\n` of at most 107 bytes. Exactly one
  space between fields; IPv4 as four decimal numbers without leading zeroes; ports 0..65535 without
  leading zeroes; a lone CR or LF is invalid; after `UNKNOWN` anything up to the CRLF is ignored and
  the connection's own address is used.
- Version 2: the 12-byte signature, version 2, command LOCAL (the balancer's own connection, e.g. a
  health check: use the connection's address) or PROXY, family/protocol, a 16-bit length, the address
  block, then TLVs, which are skipped as the length says (none is interpreted). Families or protocols
  the receiver does not use (UNSPEC, AF_UNIX, DGRAM over UNSPEC) fall back to the connection's address,
  as the specification allows; unassigned values are rejected.

Anything else is a `ProxyProtocolError`: the specification says to abort such a connection, and never
to guess whether a header is there (a listener either requires it or does not accept it).
"""

from __future__ import annotations

import ipaddress
import re
from typing import NamedTuple

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_PREFIX = b"PROXY "
V1_MAX = 107  # bytes of the longest version 1 line, CRLF included
V2_FIXED = 16  # signature, version/command, family/protocol, length
MIN_HEADER = 15  # "PROXY UNKNOWN\r\n": no header is shorter, so this many bytes may always be read

_V2_ADDRESS_BYTES = {1: 12, 2: 36, 3: 216}  # AF_INET, AF_INET6, AF_UNIX: the address block's size
_V1_IPV4 = re.compile(r"(?:0|[1-9][0-9]{0,2})(?:\.(?:0|[1-9][0-9]{0,2})){3}")
_V1_IPV6 = re.compile(r"[0-9A-Fa-f:]{2,39}")
_V1_PORT = re.compile(r"0|[1-9][0-9]{0,4}")


class ProxyProtocolError(ValueError):
    """The bytes are not a valid PROXY protocol header (the message says what is wrong)."""


class ProxyHeader(NamedTuple):
    version: int  # 1 or 2
    length: int  # bytes of the header: the client's own bytes start after them
    source: tuple[str, int] | None  # the client's (address, port); None: use the connection's own
    destination: tuple[str, int] | None


def parse(data: bytes) -> ProxyHeader | None:
    """The header at the start of `data`, or None while it is incomplete (read more, see `wanted`).
    Raises ProxyProtocolError as soon as the bytes cannot become a valid header."""
    if data[:1] == b"\r":
        return _parse_v2(data)
    if data[: len(V1_PREFIX)] != V1_PREFIX[: len(data)]:
        raise ProxyProtocolError("not a PROXY protocol header")
    return _parse_v1(data)


def wanted(data: bytes) -> int:
    """How many more bytes surely belong to the header whose start is `data` (parse() said None), so a
    reader can take exactly those without reading into the client's own bytes (on a TLS listener those
    go to the TLS layer). 0: a version 1 line before its CRLF, whose end only a look at the data tells."""
    if len(data) < MIN_HEADER:
        return MIN_HEADER - len(data)
    if data[:1] == b"\r":
        if len(data) < V2_FIXED:
            return V2_FIXED - len(data)
        return V2_FIXED + int.from_bytes(data[14:16], "big") - len(data)
    return 0


def v1_end(data: bytes) -> int:
    """The length of the version 1 line in `data` (its CRLF included), or -1 if its CRLF is not there."""
    end = data.find(b"\r\n", 0, V1_MAX)
    return -1 if end < 0 else end + 2


def _parse_v1(data: bytes) -> ProxyHeader | None:
    end = v1_end(data)
    line = data[: end - 2] if end >= 0 else data[:V1_MAX]
    if b"\n" in line or b"\r" in line[:-1] or (end >= 0 and b"\r" in line):
        raise ProxyProtocolError("version 1 header with a lone CR or LF (only CRLF ends the line)")
    if end < 0:
        if len(data) >= V1_MAX:
            raise ProxyProtocolError(f"version 1 header without CRLF in its first {V1_MAX} bytes")
        return None
    try:
        fields = line[len(V1_PREFIX) :].decode("ascii").split(" ")
    except UnicodeDecodeError:
        raise ProxyProtocolError("version 1 header is not US-ASCII") from None
    proto = fields[0]
    if proto == "UNKNOWN":
        return ProxyHeader(1, end, None, None)
    if proto not in ("TCP4", "TCP6"):
        raise ProxyProtocolError(f"version 1 header with unknown protocol {proto[:8]!r}")
    if len(fields) != 5:
        raise ProxyProtocolError("version 1 header needs exactly: protocol, 2 addresses, 2 ports, one space apart")
    src = _v1_address(fields[1], proto)
    dst = _v1_address(fields[2], proto)
    return ProxyHeader(1, end, (src, _v1_port(fields[3])), (dst, _v1_port(fields[4])))


def _v1_address(text: str, proto: str) -> str:
    if proto == "TCP4":
        if not _V1_IPV4.fullmatch(text) or any(int(part) > 255 for part in text.split(".")):
            raise ProxyProtocolError(f"version 1 header: {text[:40]!r} is not an IPv4 address")
        return text
    if not _V1_IPV6.fullmatch(text):  # (ipaddress alone would take a scope id or a dotted IPv4 tail)
        raise ProxyProtocolError(f"version 1 header: {text[:40]!r} is not an IPv6 address")
    try:
        return _v6(ipaddress.IPv6Address(text))
    except ValueError:
        raise ProxyProtocolError(f"version 1 header: {text[:40]!r} is not an IPv6 address") from None


def _v1_port(text: str) -> int:
    if not _V1_PORT.fullmatch(text) or int(text) > 65535:
        raise ProxyProtocolError(f"version 1 header: {text[:8]!r} is not a port (0..65535, no leading zeroes)")
    return int(text)


def _v6(address: ipaddress.IPv6Address) -> str:
    """An IPv4 client behind an IPv6 balancer (::ffff:a.b.c.d) is that IPv4 address: bans and
    throttling by IPv4 address or CIDR must find it."""
    mapped = address.ipv4_mapped
    return str(mapped) if mapped is not None else str(address)


def _parse_v2(data: bytes) -> ProxyHeader | None:
    if data[:12] != V2_SIGNATURE[: len(data)]:
        raise ProxyProtocolError("not a PROXY protocol header (broken version 2 signature)")
    if len(data) < V2_FIXED:
        if len(data) > 12 and data[12] >> 4 != 2:
            raise ProxyProtocolError(f"version 2 signature with version {data[12] >> 4} (only 2 exists)")
        return None
    ver_cmd, fam_proto = data[12], data[13]
    if ver_cmd >> 4 != 2:
        raise ProxyProtocolError(f"version 2 signature with version {ver_cmd >> 4} (only 2 exists)")
    command = ver_cmd & 0x0F
    if command > 1:
        raise ProxyProtocolError(f"version 2 header with unassigned command {command:#x}")
    family, proto = fam_proto >> 4, fam_proto & 0x0F
    if family > 3 or proto > 2:
        raise ProxyProtocolError(f"version 2 header with unassigned family/protocol {fam_proto:#04x}")
    total = V2_FIXED + int.from_bytes(data[14:16], "big")
    if len(data) < total:
        return None
    if command == 0:  # LOCAL: the balancer's own connection; the address block is ignored
        return ProxyHeader(2, total, None, None)
    need = _V2_ADDRESS_BYTES.get(family, 0)
    if total - V2_FIXED < need:
        raise ProxyProtocolError(f"version 2 header: address block of {total - V2_FIXED} bytes, family needs {need}")
    if family == 1 and proto:
        src4, dst4 = ipaddress.IPv4Address(data[16:20]), ipaddress.IPv4Address(data[20:24])
        ports = data[24:28]
        return ProxyHeader(2, total, (str(src4), _port(ports, 0)), (str(dst4), _port(ports, 2)))
    if family == 2 and proto:
        src6, dst6 = ipaddress.IPv6Address(data[16:32]), ipaddress.IPv6Address(data[32:48])
        ports = data[48:52]
        return ProxyHeader(2, total, (_v6(src6), _port(ports, 0)), (_v6(dst6), _port(ports, 2)))
    return ProxyHeader(2, total, None, None)  # UNSPEC or AF_UNIX: the connection's own address


def _port(ports: bytes, at: int) -> int:
    return int.from_bytes(ports[at : at + 2], "big")


__all__ = ["MIN_HEADER", "V1_MAX", "ProxyHeader", "ProxyProtocolError", "parse", "v1_end", "wanted"]
