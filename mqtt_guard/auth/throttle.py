"""Login throttling and bans, as pure logic: failure counting per source address and per (address,
username), and the table of bans in force with CIDR matching. No I/O and no clock: every call takes
`now` (monotonic or wall seconds, the caller's choice, used consistently), so the rules are unit- and
property-tested against a naive model (tests/auth/test_throttle.py).

Why it looks like this:
- A password guess costs the broker a hash (milliseconds of CPU). Past `max_failures` failures from one
  address within `window`, the address is refused for `ban_for` without any hash work; past
  `max_user_failures` failures of one username from one address, that username is refused from that
  address. The per-pair lockout comes first on purpose: one device with an outdated password retrying
  every second stops costing hashes without locking out the other devices behind the same NAT address.
- Windows are fixed, starting at an entry's first failure (as a Redis key with a TTL does): the count
  is what Redis holds cluster-wide (`merge`), so the brokers agree without a round trip per CONNECT.
- Counting state is bounded (`max_entries`): an attacker rotating addresses evicts the oldest entries,
  it cannot grow memory.
- Ban ids are the key names under `<prefix>ban:` (store/bans.py): `net:<cidr>` (an admin's ban),
  `addr:<address>` (an automatic ban), `user:<address> <username>` (an automatic per-pair lockout).
  Addresses never contain a space, so the pair id splits unambiguously.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
BanKind = Literal["manual", "auto", "user"]

KIND_MANUAL: BanKind = "manual"
KIND_AUTO: BanKind = "auto"
KIND_USER: BanKind = "user"
_ID_HEADS: dict[str, BanKind] = {"net:": KIND_MANUAL, "addr:": KIND_AUTO, "user:": KIND_USER}
_KIND_HEADS = {kind: head for head, kind in _ID_HEADS.items()}


def canonical_address(text: str | None) -> str | None:
    """The address as bans and counters key it: IPv4-mapped IPv6 (`::ffff:192.0.2.1`, a dual-stack
    listener's view of an IPv4 client) as plain IPv4, IPv6 compressed without a zone; None when `text`
    is not an IP address (a Unix socket, an unknown peer)."""
    if not text:
        return None
    if ":" not in text and text[-1:].isdigit() and text.count(".") == 3:
        return text  # dotted IPv4 from the kernel is canonical already (the common case, per CONNECT)
    try:
        ip = ipaddress.ip_address(text.partition("%")[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def parse_network(text: str) -> Network:
    """An admin's `ADDR` or `CIDR` as a network (`192.0.2.7` is `192.0.2.7/32`; host bits of a CIDR are
    dropped: `10.1.2.3/8` is `10.0.0.0/8`); ValueError for anything else."""
    text = text.strip()
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValueError(f"not an IP address or CIDR network: {text!r}") from None
    if isinstance(net, ipaddress.IPv6Network) and net.prefixlen >= 96 and net.network_address.ipv4_mapped is not None:
        mapped = net.network_address.ipv4_mapped
        return ipaddress.IPv4Network(f"{mapped}/{net.prefixlen - 96}", strict=False)
    return net


def net_id(net: Network) -> str:
    return f"net:{net.with_prefixlen}"


def addr_id(address: str) -> str:
    return f"addr:{address}"


def user_id(address: str, username: str) -> str:
    return f"user:{address} {username}"


@dataclass(slots=True)
class Ban:
    """One ban in force. `until` is in the same clock as the `now` given to the table (math.inf: until
    lifted); `network` is the CIDR of a manual ban, else the single address."""

    kind: BanKind
    network: str
    until: float
    reason: str = ""
    by: str = ""
    username: str | None = None  # the username of a per-pair lockout
    failures: int = 0  # the failures that caused an automatic ban
    kick: bool = False  # an admin's ban that also disconnects the clients connected from the network

    @property
    def id(self) -> str:
        if self.kind == KIND_USER:
            return user_id(self.network, self.username or "")
        if self.kind == KIND_AUTO:
            return addr_id(self.network)
        return f"net:{self.network}"


def ban_matcher(ban: Ban) -> Callable[[str], bool]:
    """Does a (canonical) address fall under this ban's network? (For disconnecting connected clients.)"""
    net = parse_network(ban.network)

    def inside(address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return ip.version == net.version and ip in net

    return inside


def parse_ban_id(ban_id: str) -> tuple[BanKind, str, str | None] | None:
    """(kind, network or address, username) of a ban id; None for an id that is not one of ours."""
    for head, kind in _ID_HEADS.items():
        if ban_id.startswith(head):
            rest = ban_id[len(head) :]
            if kind == KIND_USER:
                address, sep, username = rest.partition(" ")
                return (kind, address, username) if sep and address else None
            return (kind, rest, None) if rest else None
    return None


class BanTable:
    """The bans in force, by id, with lookups by address: single addresses (automatic bans, /32 and /128
    admin bans) by dict, wider networks by a scan of the (few) networks of their IP version."""

    def __init__(self) -> None:
        self._bans: dict[str, Ban] = {}
        self._hosts: dict[str, Ban] = {}  # canonical address -> admin or automatic ban of just that address
        self._auto: dict[str, Ban] = {}
        self._pairs: dict[tuple[str, str], Ban] = {}
        self._nets: dict[str, tuple[Network, Ban]] = {}  # id -> wider admin networks

    def __len__(self) -> int:
        return len(self._bans)

    def __contains__(self, ban_id: str) -> bool:
        return ban_id in self._bans

    def all(self) -> list[Ban]:
        return list(self._bans.values())

    def put(self, ban: Ban) -> None:
        ban_id = ban.id
        self.remove(ban_id)
        self._bans[ban_id] = ban
        if ban.kind == KIND_USER:
            self._pairs[(ban.network, ban.username or "")] = ban
        elif ban.kind == KIND_AUTO:
            self._auto[ban.network] = ban
        else:
            net = parse_network(ban.network)
            if net.num_addresses == 1:
                self._hosts[str(net.network_address)] = ban
            else:
                self._nets[ban_id] = (net, ban)

    def remove(self, ban_id: str) -> None:
        ban = self._bans.pop(ban_id, None)
        if ban is None:
            return
        if ban.kind == KIND_USER:
            self._pairs.pop((ban.network, ban.username or ""), None)
        elif ban.kind == KIND_AUTO:
            self._auto.pop(ban.network, None)
        elif ban_id in self._nets:
            del self._nets[ban_id]
        else:
            self._hosts.pop(str(parse_network(ban.network).network_address), None)

    def clear(self) -> None:
        for ban_id in list(self._bans):
            self.remove(ban_id)

    def lookup(self, address: str | None, username: str | None, now: float) -> Ban | None:
        """The ban a CONNECT from `address` (canonical) as `username` falls under, or None. Expired bans
        found on the way are dropped."""
        if address is None or not self._bans:
            return None
        for found in (self._hosts.get(address), self._auto.get(address)):
            if found is not None:
                if found.until > now:
                    return found
                self.remove(found.id)
        if self._nets:
            ip = ipaddress.ip_address(address)
            for ban_id, (net, ban) in list(self._nets.items()):
                if ip.version == net.version and ip in net:
                    if ban.until > now:
                        return ban
                    self.remove(ban_id)
        if username is not None and self._pairs:
            pair = self._pairs.get((address, username))
            if pair is not None:
                if pair.until > now:
                    return pair
                self.remove(pair.id)
        return None


@dataclass(slots=True)
class _Count:
    n: int
    started: float
    banned: bool = False  # this window already produced its ban


@dataclass(frozen=True, slots=True)
class Verdict:
    """A threshold crossed: ban `address` (username None) or the pair (address, username)."""

    address: str
    username: str | None
    failures: int


class FailureCounter:
    """Failures per address and per (address, username) in fixed windows, and the increments not yet
    sent to Redis. Thresholds: a window whose count reaches the limit yields one `Verdict`."""

    def __init__(
        self,
        *,
        max_failures: int,
        max_user_failures: int,
        window: float,
        exempt: list[Network] | None = None,
        max_entries: int = 100_000,
    ) -> None:
        self.max_failures = max_failures
        self.max_user_failures = max_user_failures
        self.window = window
        self.exempt = list(exempt or [])
        self.max_entries = max_entries
        self._addr: dict[str, _Count] = {}
        self._pair: dict[tuple[str, str], _Count] = {}
        self.pending_addr: dict[str, int] = {}  # increments not yet added to Redis
        self.pending_pair: dict[tuple[str, str], int] = {}

    def exempted(self, address: str) -> bool:
        if not self.exempt:
            return False
        ip = ipaddress.ip_address(address)
        return any(ip.version == net.version and ip in net for net in self.exempt)

    def _bump(self, table: dict[Any, _Count], key: Any, n: int, now: float) -> _Count:
        count = table.get(key)
        if count is None or now - count.started >= self.window:
            if count is not None:
                del table[key]  # re-inserted last: the dict's order is the age order that eviction uses
            elif len(table) >= self.max_entries:
                del table[next(iter(table))]
            count = table[key] = _Count(0, now)
        count.n += n
        return count

    def failed(self, address: str, username: str | None, now: float) -> list[Verdict]:
        """Count one failure; the bans it calls for (at most one per key and window)."""
        if self.exempted(address):
            return []
        out: list[Verdict] = []
        count = self._bump(self._addr, address, 1, now)
        _add(self.pending_addr, address, self.max_entries)
        if self.max_failures and count.n >= self.max_failures and not count.banned:
            count.banned = True
            out.append(Verdict(address, None, count.n))
        if username is not None:
            pair = (address, username)
            count = self._bump(self._pair, pair, 1, now)
            _add(self.pending_pair, pair, self.max_entries)
            if self.max_user_failures and count.n >= self.max_user_failures and not count.banned:
                count.banned = True
                out.append(Verdict(address, username, count.n))
        return out

    def merge(self, address: str, username: str | None, total: int, now: float) -> Verdict | None:
        """Redis says the cluster-wide count of this key's window is `total`: adopt it when larger than
        ours (failures on other brokers count here too); a Verdict when that crosses the threshold."""
        if self.exempted(address):
            return None
        limit = self.max_failures if username is None else self.max_user_failures
        if username is None:
            count = self._addr.get(address)
            table_key: Any = address
            table: dict[Any, _Count] = self._addr
        else:
            table_key = (address, username)
            count = self._pair.get(table_key)
            table = self._pair
        if count is None or now - count.started >= self.window:
            count = self._bump(table, table_key, 0, now)
        count.n = max(count.n, total)
        if limit and count.n >= limit and not count.banned:
            count.banned = True
            return Verdict(address, username, count.n)
        return None

    def recent(self, address: str | None, now: float) -> bool:
        """Did `address` fail within the window? (Its further password checks are "repeat-failure" work,
        shed first when the verification queue is full.)"""
        if address is None:
            return False
        count = self._addr.get(address)
        return count is not None and count.n > 0 and now - count.started < self.window

    def drain(self) -> tuple[dict[str, int], dict[tuple[str, str], int]]:
        """The increments to add to Redis, and forget them (the caller puts them back if Redis fails)."""
        addr, pair = self.pending_addr, self.pending_pair
        self.pending_addr, self.pending_pair = {}, {}
        return addr, pair

    def restore(self, addr: dict[str, int], pair: dict[tuple[str, str], int]) -> None:
        """Increments that could not be written: sent with the next flush (bounded like the rest)."""
        for a, n in addr.items():
            _add(self.pending_addr, a, self.max_entries, n)
        for p, n in pair.items():
            _add(self.pending_pair, p, self.max_entries, n)


def _add(into: dict[Any, int], key: Any, limit: int, n: int = 1) -> None:
    if key in into:
        into[key] += n
    elif len(into) < limit:
        into[key] = n


def remaining(until: float, now: float) -> float:
    """Seconds a ban has left (math.inf: until lifted)."""
    return math.inf if math.isinf(until) else max(0.0, until - now)
