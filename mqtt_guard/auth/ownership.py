"""Who may use a client id (`auth.client_id_policy`, `auth.client_id_prefixes`): one pure rule.

A client id names a session: whoever connects with it takes over the connection and, with clean session
0, the subscriptions and queued messages kept for it. Without a rule any authenticated user could close
another user's device and destroy its session just by reusing its id (issue 15). The engine asks
`refusal` once per CONNECT, after authentication and before the client is attached anywhere, with who
holds the id on this broker (a CONNECT admitted with it and not yet connected, online, or by a persistent
session kept offline). Across brokers the session registry applies the `owner` comparison itself, in
Redis (`store.quota.REGISTRY_LUA`'s owner flag: the registered username differs, '' being the anonymous
identity), tested against this rule; the engine then answers with `HELD_REFUSAL`.

Policies:
- ``owner``: an id held by one identity is refused to any other (CONNACK 2, identifier rejected); the
  same identity takes over as before. Anonymous clients are one identity among themselves: an id held
  by an anonymous client may be taken over by another anonymous client (they cannot be told apart), not
  by a named user, and an id held by a named user is refused to anonymous clients.
- ``username-prefix``: the id must be the username followed by one of `SEPARATORS` and anything
  (``alice-1``, ``alice/kitchen``, ``alice:x``, ``alice_2``); anonymous clients have no username and are
  refused. The ``owner`` rule applies too (usernames that contain a separator make overlapping
  prefixes: ``alice-bob-1`` fits both ``alice`` and ``alice-bob``; the first to hold it keeps it). An id
  the broker generated for a client that sent none is nobody's choice and is exempt from the prefix.
- ``any``: no rule (mosquitto's behaviour; the default under a mosquitto.conf).

`prefixes` is mosquitto's `clientid_prefixes`: when given, the id must start with one of them whatever
the policy, and the refusal is CONNACK 5 (not authorised), as mosquitto 2.0.11 answers (measured: it does
not answer 2 there).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import ClientIdPolicy
from ..metrics.counters import REFUSED_CLIENT_ID_HELD, REFUSED_CLIENT_ID_PREFIX

SEPARATORS = frozenset("-_/:")  # what may follow the username under `username-prefix`
CONNACK_IDENTIFIER_REJECTED = 2  # MQTT 3.1.1; MQTT 5 has 0x85 (Client Identifier not valid)
CONNACK_NOT_AUTHORIZED = 5

# Why a CONNECT was refused (the auth_failed_<kind> counters; a fixed set)
HELD = REFUSED_CLIENT_ID_HELD
PREFIX = REFUSED_CLIENT_ID_PREFIX


@dataclass(frozen=True, slots=True)
class Refusal:
    code: int  # the CONNACK return code
    kind: str  # HELD or PREFIX
    reason: str  # for the log line


HELD_REFUSAL = Refusal(CONNACK_IDENTIFIER_REJECTED, HELD, "client id is held by another user")


def refusal(
    policy: ClientIdPolicy,
    client_id: str,
    username: str | None,
    *,
    held: bool,
    holder: str | None,
    prefixes: tuple[str, ...] = (),
    generated: bool = False,
) -> Refusal | None:
    """None: `username` (None = anonymous) may use `client_id`. `held`: a connection or a persistent session
    of identity `holder` (None = anonymous) has the id; `generated`: the broker made the id up."""
    if prefixes and not client_id.startswith(prefixes):
        return Refusal(CONNACK_NOT_AUTHORIZED, PREFIX, "client id does not start with one of client_id_prefixes")
    if policy == "any":
        return None
    if policy == "username-prefix" and not generated:
        if username is None:
            return Refusal(
                CONNACK_IDENTIFIER_REJECTED, PREFIX, "anonymous clients have no username to prefix their client id with"
            )
        n = len(username)
        if not (len(client_id) > n and client_id.startswith(username) and client_id[n] in SEPARATORS):
            return Refusal(
                CONNACK_IDENTIFIER_REJECTED,
                PREFIX,
                f"client id must start with the username and one of {' '.join(sorted(SEPARATORS))}",
            )
    if held and holder != username:
        return HELD_REFUSAL
    return None


__all__ = ["HELD_REFUSAL", "ClientIdPolicy", "Refusal", "SEPARATORS", "refusal"]
