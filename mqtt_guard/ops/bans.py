"""Address bans (`mqtt-guard ban`/`unban`, `/api/bans`): refuse CONNECTs from an address or network on
every broker at once (docs: README "Bans"). The brokers read them from Redis (store/bans.py)."""

from __future__ import annotations

import math
import time
from ipaddress import IPv4Network, IPv6Network
from typing import Any

from ..auth.throttle import KIND_MANUAL, Ban, net_id, parse_ban_id, parse_network
from ..store.bans import BanStore
from ..store.keys import Keys
from . import MAX_SECONDS, Invalid, check_number


def network(text: str) -> IPv4Network | IPv6Network:
    """An address or CIDR network as a network (an address is a /32 or /128)."""
    try:
        return parse_network(text)
    except ValueError as exc:
        raise Invalid(str(exc)) from None


async def ban(
    redis: Any, keys: Keys, target: str, seconds: float | None, reason: str, by: str, *, kick: bool = False
) -> Ban:
    """Ban `target` for `seconds` (None: until unbanned); with `kick`, the brokers also disconnect the
    clients connected from it."""
    net = network(target)
    if seconds is not None:
        check_number(seconds, "the duration", 0, MAX_SECONDS, low_open=True)
    until = math.inf if seconds is None else time.time() + seconds
    record = Ban(KIND_MANUAL, net.with_prefixlen, until, reason=reason, by=by, kick=kick)
    await BanStore(redis, keys).put(record)
    return record


async def unban(redis: Any, keys: Keys, target: str) -> tuple[str, int]:
    """Lift the admin's ban of `target` and every login-throttling ban of an address inside it:
    (the network as written, how many bans were lifted)."""
    net = network(target)
    store = BanStore(redis, keys)
    ids = [net_id(net)]
    addresses = []
    for ban_id in await store.ids():
        parsed = parse_ban_id(ban_id)
        if parsed is None or parsed[0] == KIND_MANUAL:
            continue
        if _inside(parsed[1], net):
            ids.append(ban_id)
            addresses.append(parsed[1])
    if net.num_addresses == 1:  # failure counts of the address start afresh even without a ban
        addresses.append(str(net.network_address))
    return net.with_prefixlen, await store.remove(ids, sorted(set(addresses)))


def _inside(address: str, net: IPv4Network | IPv6Network) -> bool:
    try:
        ip = parse_network(address).network_address
    except ValueError:
        return False
    return bool(ip.version == net.version and ip in net)


async def list_bans(redis: Any, keys: Keys) -> list[Ban]:
    """Every ban in force, the admin's first, then login throttling's."""
    bans = await BanStore(redis, keys).all()
    bans.sort(key=lambda b: (b.kind != KIND_MANUAL, b.network, b.username or ""))
    return bans


def ban_view(b: Ban, now: float) -> dict[str, Any]:
    """A ban as `ban list --json` and the API show it."""
    return {
        "kind": b.kind,
        "network": b.network,
        "username": b.username,
        "until": None if math.isinf(b.until) else round(b.until, 3),
        "remaining": None if math.isinf(b.until) else round(max(0.0, b.until - now), 3),
        "reason": b.reason,
        "by": b.by,
    }
