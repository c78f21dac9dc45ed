"""engine/proxy_protocol.py: the PROXY protocol v1/v2 parser against the specification's examples and
its rules (haproxy doc/proxy-protocol.txt 2.1, 2.2); no byte string raises anything but the parse error."""

from __future__ import annotations

import socket
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mqtt_guard.engine.proxy_protocol import (
    MIN_HEADER,
    V1_MAX,
    ProxyHeader,
    ProxyProtocolError,
    parse,
    wanted,
)

SIG = b"\r\n\r\n\x00\r\nQUIT\n"


def v2(command: int = 1, fam: int = 0x11, addresses: bytes = b"", tlvs: bytes = b"", version: int = 2) -> bytes:
    body = addresses + tlvs
    return SIG + bytes([(version << 4) | command, fam]) + struct.pack("!H", len(body)) + body


def v2_ipv4(src: str, sport: int, dst: str, dport: int, tlvs: bytes = b"") -> bytes:
    block = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!HH", sport, dport)
    return v2(addresses=block, tlvs=tlvs)


def v2_ipv6(src: str, sport: int, dst: str, dport: int) -> bytes:
    block = socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, dst)
    return v2(fam=0x21, addresses=block + struct.pack("!HH", sport, dport))


def tlv(kind: int, value: bytes) -> bytes:
    return bytes([kind]) + struct.pack("!H", len(value)) + value


# -- version 1 ------------------------------------------------------------------------------------------


def test_v1_tcp4_the_spec_example_and_what_follows_it_is_not_the_header():
    line = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"
    expected = ProxyHeader(1, len(line), ("192.168.0.1", 56324), ("192.168.0.11", 443))
    assert parse(line + b"GET / HTTP/1.1\r\n") == expected


def test_v1_tcp6_compressed_and_full_forms():
    h = parse(b"PROXY TCP6 2001:db8::1 2001:0db8:0000:0000:0000:0000:0000:0002 65535 0\r\n")
    assert h is not None and h.source == ("2001:db8::1", 65535) and h.destination == ("2001:db8::2", 0)


def test_v1_ipv4_mapped_ipv6_source_is_the_ipv4_address():
    h = parse(b"PROXY TCP6 ::ffff:c000:0201 ::1 1000 1883\r\n")
    assert h is not None and h.source == ("192.0.2.1", 1000)


@pytest.mark.parametrize("line", [b"PROXY UNKNOWN\r\n", b"PROXY UNKNOWN ffff::1 ffff::2 65535 65535\r\n"])
def test_v1_unknown_uses_the_connection_address(line):
    assert parse(line) == ProxyHeader(1, len(line), None, None)


def test_v1_worst_case_length_107_is_accepted_and_108_refused():
    ip = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
    line = f"PROXY UNKNOWN {ip} {ip} 65535 65535\r\n".encode()
    assert len(line) == V1_MAX
    assert parse(line) is not None
    with pytest.raises(ProxyProtocolError, match="107"):
        parse(line[:-2] + b"0\r\n")


def test_v1_partial_lines_wait_for_more():
    line = b"PROXY TCP4 10.0.0.1 10.0.0.2 1 2\r\n"
    for i in range(len(line)):
        assert parse(line[:i]) is None, line[:i]
    assert parse(line) is not None


@pytest.mark.parametrize(
    "line",
    [
        b"PROXY TCP4 010.0.0.1 10.0.0.2 1 2\r\n",  # leading zero
        b"PROXY TCP4 256.0.0.1 10.0.0.2 1 2\r\n",
        b"PROXY TCP4 10.0.0.1 10.0.0.2 01 2\r\n",  # port with a leading zero
        b"PROXY TCP4 10.0.0.1 10.0.0.2 1 65536\r\n",
        b"PROXY TCP4 10.0.0.1  10.0.0.2 1 2\r\n",  # two spaces
        b"PROXY TCP4 10.0.0.1 10.0.0.2 1\r\n",
        b"PROXY TCP4 10.0.0.1 10.0.0.2 1 2 3\r\n",
        b"PROXY TCP4 ::1 ::1 1 2\r\n",  # family mismatch
        b"PROXY TCP6 10.0.0.1 10.0.0.2 1 2\r\n",
        b"PROXY TCP6 ::ffff:10.0.0.1 ::1 1 2\r\n",  # dotted tail: not the canonical hex form
        b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n",  # scope id
        b"PROXY TCP6 1::2::3 ::1 1 2\r\n",
        b"PROXY UDP4 10.0.0.1 10.0.0.2 1 2\r\n",
        b"PROXY tcp4 10.0.0.1 10.0.0.2 1 2\r\n",
        b"PROXY TCP4 10.0.0.1 10.0.0.2 1 2\n",  # lone LF
        b"PROXY TCP4 10.0.0.1\r10.0.0.2 1 2\r\n",  # lone CR
        b"PROXY TCP4 10.0.0.\xff 10.0.0.2 1 2\r\n",
        b"PROXY\r\n",
        b"proxy TCP4 10.0.0.1 10.0.0.2 1 2\r\n",
    ],
)
def test_v1_malformed_lines_are_refused(line):
    with pytest.raises(ProxyProtocolError):
        parse(line)


def test_v1_oversize_line_without_crlf_is_refused():
    with pytest.raises(ProxyProtocolError, match="CRLF"):
        parse(b"PROXY TCP4 " + b"1" * 200)


# -- version 2 ------------------------------------------------------------------------------------------


def test_v2_tcp_over_ipv4():
    data = v2_ipv4("203.0.113.7", 40000, "10.0.0.2", 1883)
    assert parse(data + b"\x10\x0c") == ProxyHeader(2, 28, ("203.0.113.7", 40000), ("10.0.0.2", 1883))


def test_v2_tcp_over_ipv6():
    h = parse(v2_ipv6("2001:db8::7", 1234, "2001:db8::1", 8883))
    assert h == ProxyHeader(2, 52, ("2001:db8::7", 1234), ("2001:db8::1", 8883))


def test_v2_local_command_uses_the_connection_address_and_skips_any_block():
    assert parse(v2(command=0, fam=0x00)) == ProxyHeader(2, 16, None, None)
    data = v2(command=0, fam=0x11, addresses=b"\x00" * 12)  # LOCAL with an address block: ignored
    assert parse(data) == ProxyHeader(2, 28, None, None)


def test_v2_tlvs_are_skipped_by_the_length():
    tlvs = tlv(0x01, b"mqtt") + tlv(0x04, b"\x00" * 9) + tlv(0x20, b"\x01\x00\x00\x00\x00" + tlv(0x21, b"TLSv1.3"))
    data = v2_ipv4("198.51.100.9", 5, "10.0.0.2", 1883, tlvs)
    h = parse(data + b"client bytes")
    assert h is not None and h.length == len(data) and h.source == ("198.51.100.9", 5)


@pytest.mark.parametrize("fam", [0x00, 0x01, 0x10, 0x31, 0x32])
def test_v2_unspec_and_unix_fall_back_to_the_connection_address(fam):
    block = b"\x00" * (216 if fam >> 4 == 3 else 12)
    assert parse(v2(fam=fam, addresses=block)) == ProxyHeader(2, 16 + len(block), None, None)


def test_v2_partial_headers_wait_and_say_how_much_surely_follows():
    data = v2_ipv4("203.0.113.7", 1, "10.0.0.2", 2)
    for i in range(len(data)):
        assert parse(data[:i]) is None
        assert 0 < wanted(data[:i]) <= len(data) - i
    assert wanted(data[:20]) == len(data) - 20


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (v2(version=1), "version"),
        (v2(command=2), "command"),
        (v2(command=0xF), "command"),
        (v2(fam=0x41), "family"),
        (v2(fam=0x13), "family"),
        (v2(addresses=b"\x00" * 11), "address block"),  # TCP over IPv4 needs 12
        (v2(fam=0x21, addresses=b"\x00" * 35), "address block"),
        (v2(fam=0x31, addresses=b"\x00" * 215), "address block"),
        (b"\r\n\r\n\x00\r\nQUIT\r", "signature"),
        (b"\r\n\r\n\x01", "signature"),
    ],
)
def test_v2_malformed_headers_are_refused(data, reason):
    with pytest.raises(ProxyProtocolError, match=reason):
        parse(data)


def test_a_wrong_version_nibble_is_refused_before_the_length_arrives():
    with pytest.raises(ProxyProtocolError, match="version"):
        parse(SIG + b"\x11")


@pytest.mark.parametrize("data", [b"\x10\x0c\x00\x04MQTT", b"GET / HTTP/1.1\r\n", b"\x16\x03\x01", b"\x00", b" PROXY"])
def test_anything_else_is_refused_at_its_first_byte(data):
    with pytest.raises(ProxyProtocolError, match="not a PROXY protocol header"):
        parse(data)


def test_wanted_never_reads_past_the_shortest_header():
    assert wanted(b"") == MIN_HEADER == len(b"PROXY UNKNOWN\r\n")
    assert wanted(b"PROXY ") == MIN_HEADER - 6
    assert wanted(b"PROXY TCP4 1.2.3") == 0  # a v1 line past 15 bytes: only a look ahead finds its end


# -- any bytes --------------------------------------------------------------------------------------------

prefixes = st.sampled_from(
    [b"", b"PROXY ", b"PROXY TCP4 ", b"PROXY TCP6 ", b"PROXY UNKNOWN", SIG, SIG + b"\x21", SIG + b"\x20"]
)


@settings(max_examples=2000, deadline=None)
@given(prefix=prefixes, rest=st.binary(max_size=300))
def test_no_byte_string_raises_anything_but_the_parse_error(prefix, rest):
    data = prefix + rest
    try:
        header = parse(data)
    except ProxyProtocolError:
        return
    if header is None:
        assert wanted(data) >= 0
        return
    assert 0 < header.length <= len(data)
    assert parse(data[: header.length]) == header  # the header does not depend on what follows it
    for peer in (header.source, header.destination):
        assert peer is None or (isinstance(peer[0], str) and 0 <= peer[1] <= 65535)


@settings(max_examples=300, deadline=None)
@given(
    src=st.ip_addresses(v=4),
    dst=st.ip_addresses(v=4),
    sport=st.integers(0, 65535),
    dport=st.integers(0, 65535),
    tail=st.binary(max_size=20),
)
def test_v1_and_v2_of_the_same_ipv4_connection_agree(src, dst, sport, dport, tail):
    one = parse(f"PROXY TCP4 {src} {dst} {sport} {dport}\r\n".encode() + tail)
    two = parse(v2_ipv4(str(src), sport, str(dst), dport) + tail)
    assert one is not None and two is not None
    assert one.source == two.source == (str(src), sport)
    assert one.destination == two.destination == (str(dst), dport)


@settings(max_examples=300, deadline=None)
@given(src=st.ip_addresses(v=6), sport=st.integers(0, 65535))
def test_v1_and_v2_of_the_same_ipv6_connection_agree(src, sport):
    one = parse(f"PROXY TCP6 {src.exploded} ::1 {sport} 1883\r\n".encode())
    two = parse(v2_ipv6(str(src), sport, "::1", 1883))
    expected = str(src.ipv4_mapped or src)
    assert one is not None and two is not None and one.source == two.source == (expected, sport)
