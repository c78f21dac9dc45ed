"""MQTT 5 reason codes (OASIS MQTT 5.0, 2.4): what the broker tells a client when it refuses, throttles or
disconnects it.

A module of its own, free of the engine, because the decisions are made on both sides of the seam:
the Guard decides (a kick by an admin, a quota, a ban) and says why with one of these codes; the engine
puts it on the wire for MQTT 5 clients and maps it to the 3.1.1 behaviour (a CONNACK return code or a
plain close) for the others. The table of which decision sends which code is docs/reason-codes.md.
"""

from __future__ import annotations

from enum import IntEnum

from .metrics.counters import KICK_OVER_QUOTA, kick_reason


class Reason(IntEnum):
    """MQTT 5 reason codes (2.4). Values below 0x80 are successes; from 0x80 on, failures."""

    SUCCESS = 0x00  # also: Normal disconnection, Granted QoS 0
    GRANTED_QOS_1 = 0x01
    GRANTED_QOS_2 = 0x02
    DISCONNECT_WITH_WILL = 0x04
    NO_MATCHING_SUBSCRIBERS = 0x10
    NO_SUBSCRIPTION_EXISTED = 0x11
    CONTINUE_AUTHENTICATION = 0x18
    REAUTHENTICATE = 0x19
    UNSPECIFIED_ERROR = 0x80
    MALFORMED_PACKET = 0x81
    PROTOCOL_ERROR = 0x82
    IMPLEMENTATION_SPECIFIC_ERROR = 0x83
    UNSUPPORTED_PROTOCOL_VERSION = 0x84
    CLIENT_IDENTIFIER_NOT_VALID = 0x85
    BAD_USER_NAME_OR_PASSWORD = 0x86
    NOT_AUTHORIZED = 0x87
    SERVER_UNAVAILABLE = 0x88
    SERVER_BUSY = 0x89
    BANNED = 0x8A
    SERVER_SHUTTING_DOWN = 0x8B
    BAD_AUTHENTICATION_METHOD = 0x8C
    KEEP_ALIVE_TIMEOUT = 0x8D
    SESSION_TAKEN_OVER = 0x8E
    TOPIC_FILTER_INVALID = 0x8F
    TOPIC_NAME_INVALID = 0x90
    PACKET_IDENTIFIER_IN_USE = 0x91
    PACKET_IDENTIFIER_NOT_FOUND = 0x92
    RECEIVE_MAXIMUM_EXCEEDED = 0x93
    TOPIC_ALIAS_INVALID = 0x94
    PACKET_TOO_LARGE = 0x95
    MESSAGE_RATE_TOO_HIGH = 0x96
    QUOTA_EXCEEDED = 0x97
    ADMINISTRATIVE_ACTION = 0x98
    PAYLOAD_FORMAT_INVALID = 0x99
    RETAIN_NOT_SUPPORTED = 0x9A
    QOS_NOT_SUPPORTED = 0x9B
    USE_ANOTHER_SERVER = 0x9C
    SERVER_MOVED = 0x9D
    SHARED_SUBSCRIPTIONS_NOT_SUPPORTED = 0x9E
    CONNECTION_RATE_EXCEEDED = 0x9F
    MAXIMUM_CONNECT_TIME = 0xA0
    SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED = 0xA1
    WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED = 0xA2


# MQTT 3.1.1 CONNACK return code -> the MQTT 5 reason code that says the same (3.2.2.2, table 3-1)
V5_CONNACK = {
    0: Reason.SUCCESS,
    1: Reason.UNSUPPORTED_PROTOCOL_VERSION,
    2: Reason.CLIENT_IDENTIFIER_NOT_VALID,
    3: Reason.SERVER_UNAVAILABLE,
    4: Reason.BAD_USER_NAME_OR_PASSWORD,
    5: Reason.NOT_AUTHORIZED,
}


# -- which packet may carry which failure (OASIS MQTT 5.0 3.2.2.2, 3.4.2.1, 3.5.2.1, 3.9.3, 3.14.2.1) ------------
# A code outside its packet's set is a protocol error on our side (a client may close on it): every code of
# the decision table below is checked against these in the tests.
CONNACK_FAILURES = frozenset(
    {
        Reason.UNSPECIFIED_ERROR,
        Reason.MALFORMED_PACKET,
        Reason.PROTOCOL_ERROR,
        Reason.IMPLEMENTATION_SPECIFIC_ERROR,
        Reason.UNSUPPORTED_PROTOCOL_VERSION,
        Reason.CLIENT_IDENTIFIER_NOT_VALID,
        Reason.BAD_USER_NAME_OR_PASSWORD,
        Reason.NOT_AUTHORIZED,
        Reason.SERVER_UNAVAILABLE,
        Reason.SERVER_BUSY,
        Reason.BANNED,
        Reason.BAD_AUTHENTICATION_METHOD,
        Reason.TOPIC_NAME_INVALID,
        Reason.PACKET_TOO_LARGE,
        Reason.QUOTA_EXCEEDED,
        Reason.PAYLOAD_FORMAT_INVALID,
        Reason.RETAIN_NOT_SUPPORTED,
        Reason.QOS_NOT_SUPPORTED,
        Reason.USE_ANOTHER_SERVER,
        Reason.SERVER_MOVED,
        Reason.CONNECTION_RATE_EXCEEDED,
    }
)
PUBACK_FAILURES = frozenset(  # PUBACK and PUBREC alike
    {
        Reason.UNSPECIFIED_ERROR,
        Reason.IMPLEMENTATION_SPECIFIC_ERROR,
        Reason.NOT_AUTHORIZED,
        Reason.TOPIC_NAME_INVALID,
        Reason.PACKET_IDENTIFIER_IN_USE,
        Reason.QUOTA_EXCEEDED,
        Reason.PAYLOAD_FORMAT_INVALID,
    }
)
SUBACK_FAILURES = frozenset(
    {
        Reason.UNSPECIFIED_ERROR,
        Reason.IMPLEMENTATION_SPECIFIC_ERROR,
        Reason.NOT_AUTHORIZED,
        Reason.TOPIC_FILTER_INVALID,
        Reason.PACKET_IDENTIFIER_IN_USE,
        Reason.QUOTA_EXCEEDED,
        Reason.SHARED_SUBSCRIPTIONS_NOT_SUPPORTED,
        Reason.SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED,
        Reason.WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED,
    }
)
DISCONNECT_BY_SERVER = frozenset(  # the codes a server may send (0x04 is the client's only)
    {
        Reason.SUCCESS,
        Reason.UNSPECIFIED_ERROR,
        Reason.MALFORMED_PACKET,
        Reason.PROTOCOL_ERROR,
        Reason.IMPLEMENTATION_SPECIFIC_ERROR,
        Reason.NOT_AUTHORIZED,
        Reason.SERVER_BUSY,
        Reason.SERVER_SHUTTING_DOWN,
        Reason.KEEP_ALIVE_TIMEOUT,
        Reason.SESSION_TAKEN_OVER,
        Reason.TOPIC_FILTER_INVALID,
        Reason.TOPIC_NAME_INVALID,
        Reason.RECEIVE_MAXIMUM_EXCEEDED,
        Reason.TOPIC_ALIAS_INVALID,
        Reason.PACKET_TOO_LARGE,
        Reason.MESSAGE_RATE_TOO_HIGH,
        Reason.QUOTA_EXCEEDED,
        Reason.ADMINISTRATIVE_ACTION,
        Reason.PAYLOAD_FORMAT_INVALID,
        Reason.RETAIN_NOT_SUPPORTED,
        Reason.QOS_NOT_SUPPORTED,
        Reason.USE_ANOTHER_SERVER,
        Reason.SERVER_MOVED,
        Reason.SHARED_SUBSCRIPTIONS_NOT_SUPPORTED,
        Reason.CONNECTION_RATE_EXCEEDED,
        Reason.MAXIMUM_CONNECT_TIME,
        Reason.SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED,
        Reason.WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED,
    }
)


# == The decision table (docs/reason-codes.md is its prose; tests/test_reasons.py holds the two together) ==
#
# -- CONNECT refused: CONNACK ---------------------------------------------------------------------------
# By the authenticator's verdict (auth/authenticator.py Outcome). Keyed by the Outcome's name, not the
# member, so this module stays below auth/ (auth may use it; it never imports auth).
_CONNACK_BY_OUTCOME: dict[str, Reason] = {
    # wrong or missing credentials: the client can fix them
    "UNKNOWN_USER": Reason.BAD_USER_NAME_OR_PASSWORD,
    "BAD_PASSWORD": Reason.BAD_USER_NAME_OR_PASSWORD,
    "NO_PASSWORD": Reason.BAD_USER_NAME_OR_PASSWORD,
    "NO_PASSWORD_SET": Reason.BAD_USER_NAME_OR_PASSWORD,  # nothing the client sends can match
    "NO_CERTIFICATE": Reason.BAD_USER_NAME_OR_PASSWORD,  # the certificate is the credential (mosquitto too)
    # the credentials are right, the identity may not connect
    "ANONYMOUS_REFUSED": Reason.NOT_AUTHORIZED,
    "DISABLED": Reason.NOT_AUTHORIZED,
    "EXPIRED": Reason.NOT_AUTHORIZED,
    # the address is banned: by an admin (`mqtt-guard ban`) or by the login throttle (failed logins)
    "BANNED": Reason.BANNED,
    "THROTTLED": Reason.BANNED,
    # the server cannot decide now: retry later
    "REDIS_DOWN": Reason.SERVER_UNAVAILABLE,
    "BUSY": Reason.SERVER_BUSY,
    # the user's record cannot be read: no code names a server-side data fault, and retrying will not
    # help until an admin repairs it, so neither 0x88 nor a credentials code
    "CORRUPT": Reason.UNSPECIFIED_ERROR,
    # an access token as the password (docs/tokens.md): an invalid, expired or mismatched one is a bad
    # password the client can replace; a revoked one names an identity that may not connect
    "BAD_TOKEN": Reason.BAD_USER_NAME_OR_PASSWORD,
    "TOKEN_EXPIRED": Reason.BAD_USER_NAME_OR_PASSWORD,
    "TOKEN_MISMATCH": Reason.BAD_USER_NAME_OR_PASSWORD,
    "TOKEN_REVOKED": Reason.NOT_AUTHORIZED,
}
REFUSED_BY_PLUGIN = Reason.NOT_AUTHORIZED
"""A third-party auth plugin said no (or raised)."""
SESSIONS_EXCEEDED = Reason.QUOTA_EXCEEDED
"""Over the user's `sessions` quota (concurrent connections across brokers)."""


def connack_reason(outcome: object) -> Reason:
    """The CONNACK reason code refusing a CONNECT for an authenticator Outcome (SUCCESS for the
    admitting ones). Unknown outcomes are refused as not authorized (fail closed)."""
    name = getattr(outcome, "name", None)
    if name in ("OK", "OK_CACHED_REDIS_DOWN", "ANONYMOUS"):
        return Reason.SUCCESS
    return _CONNACK_BY_OUTCOME.get(name if isinstance(name, str) else "", Reason.NOT_AUTHORIZED)


def blocked_reason(block_reason: str) -> Reason:
    """The CONNACK reason code of a CONNECT refused by a block (`<prefix>block:`), from the block's reason
    text: 0x97 Quota exceeded when a quota set it (`on_exceed: disconnect` blocks the user until the
    window ends; the text names the quota, as the kick counters classify it), else 0x8A Banned (`kick
    --block`, `mqtt-guard block`: an admin keeps the client out)."""
    return Reason.QUOTA_EXCEEDED if kick_reason(block_reason) == KICK_OVER_QUOTA else Reason.BANNED


# What a 3.1.1 client is answered for each CONNACK reason code: the return code it got before MQTT 5
# (credentials, bans, blocks and quotas all 5, "not authorised"; Redis down and busy 3, "server
# unavailable"). A function of the v5 code, so the engine keeps one decision and derives the 3.1.1 answer.
CONNACK_311: dict[int, int] = {
    Reason.UNSUPPORTED_PROTOCOL_VERSION: 1,
    Reason.CLIENT_IDENTIFIER_NOT_VALID: 2,
    Reason.SERVER_UNAVAILABLE: 3,
    Reason.SERVER_BUSY: 3,
    Reason.BAD_USER_NAME_OR_PASSWORD: 5,
    Reason.NOT_AUTHORIZED: 5,
    Reason.BANNED: 5,
    Reason.QUOTA_EXCEEDED: 5,
    Reason.UNSPECIFIED_ERROR: 5,
}


def connack_311(reason: int) -> int:
    """The MQTT 3.1.1 CONNACK return code for a CONNACK reason code (5, not authorised, for any other)."""
    return CONNACK_311.get(reason, 5) if reason else 0


# -- server-initiated DISCONNECT (a 3.1.1 client's socket is just closed) ------------------------------------
KICKED = Reason.ADMINISTRATIVE_ACTION
"""`mqtt-guard kick`, the admin API's kick, `session drop`: and the default of a kick record without a code."""
BLOCKED = Reason.ADMINISTRATIVE_ACTION
"""Blocked while connected (`ban --kick`, a block the sidecar finds): 0x8A Banned is CONNACK-only."""
USER_REVOKED = Reason.NOT_AUTHORIZED
"""The user was deleted, disabled or expired while connected: its credentials no longer admit it."""
SESSION_TIME = Reason.MAXIMUM_CONNECT_TIME
"""Over `session_time`."""
TOKEN_EXPIRED = Reason.MAXIMUM_CONNECT_TIME
"""The client's access token expired while it was connected (docs/tokens.md): the time it was granted is up."""
TOKEN_REVOKED = Reason.NOT_AUTHORIZED
"""Its access token was revoked (`mqtt-guard token revoke`)."""
SLOW_CONSUMER = Reason.QUOTA_EXCEEDED
"""Over `max_queue` for `queue_grace`: a limit of the client's own quota (0x89 Server busy would blame the
server, which is fine, and invite an immediate reconnect into the same backlog)."""
TAKEN_OVER = Reason.SESSION_TAKEN_OVER
"""The same client id connected again (here or on another broker)."""
KEEP_ALIVE = Reason.KEEP_ALIVE_TIMEOUT
TOO_LARGE = Reason.PACKET_TOO_LARGE
"""A packet over `limits.max_packet_size`."""
OVER_QUOTA = Reason.QUOTA_EXCEEDED
"""Over `events`/`bytes` with `on_exceed: disconnect`."""
OVER_RATE = Reason.MESSAGE_RATE_TOO_HIGH
"""Over `rate` with `on_exceed: disconnect` (0x96 is DISCONNECT-only)."""
DENIED_PUBLISH = Reason.NOT_AUTHORIZED
"""A PUBLISH the ACL denied, with `acl.deny_publish_action: disconnect`."""
SHUTDOWN = Reason.SERVER_SHUTTING_DOWN
USE_ANOTHER_SERVER = Reason.USE_ANOTHER_SERVER
"""Shutdown with `shutdown.server_reference`: the client is told where to reconnect (Server Reference)."""


def quota_disconnect(metric: str) -> Reason:
    """The DISCONNECT of a client over a quota with `on_exceed: disconnect`: `metric` is "rate",
    "events" or "bytes" (quota/allowance.py)."""
    return OVER_RATE if metric == "rate" else OVER_QUOTA


def kick_code(raw: object) -> Reason:
    """The DISCONNECT code of a kick record from Redis (`code`, written by brokers, the sidecar and the
    CLI): a record without one (written before MQTT 5), or with one a server may not send, is an
    administrative action."""
    try:
        code = Reason(int(raw))  # type: ignore[call-overload]  # str or int from JSON; anything else: ValueError/TypeError
    except (TypeError, ValueError, OverflowError):  # (OverflowError: a float infinity, found by hypothesis)
        return KICKED
    return code if code in DISCONNECT_BY_SERVER and code else KICKED


# -- PUBLISH and SUBSCRIBE refused: PUBACK / PUBREC / SUBACK ----------------------------------------------
PUBLISH_DENIED = Reason.NOT_AUTHORIZED
"""A QoS 1/2 PUBLISH the ACL denied (PUBACK/PUBREC). A 3.1.1 client gets a success ack (mosquitto does)."""
PUBLISH_OVER_QUOTA = Reason.QUOTA_EXCEEDED
"""A QoS 1/2 PUBLISH over `events`, `bytes` or `rate` (0x96 may not appear in a PUBACK)."""
SUBSCRIBE_DENIED = Reason.NOT_AUTHORIZED
"""A SUBSCRIBE filter the ACL denied (SUBACK; 0x80 for a 3.1.1 client)."""


# -- Reason Strings (property 0x1F): what a person reading the client's log is told ------------------------
# Short, fixed per code: never the log's detail (an admin's kick text, a rule, a count), so nothing about the
# configuration, other users or secrets reaches a client. Sent on a failure (>= 0x80) only: CONNACK and
# DISCONNECT always, PUBACK/PUBREC/PUBCOMP/SUBACK only when the client did not set Request Problem
# Information to 0 [MQTT-3.1.2-29]; left out when the packet would exceed the client's Maximum Packet Size
# [MQTT-3.1.2-25] (engine/mqtt5.py).
REASON_STRINGS: dict[int, str] = {
    Reason.UNSPECIFIED_ERROR: "unspecified error",
    Reason.MALFORMED_PACKET: "malformed packet",
    Reason.PROTOCOL_ERROR: "protocol error",
    Reason.IMPLEMENTATION_SPECIFIC_ERROR: "implementation specific error",
    Reason.UNSUPPORTED_PROTOCOL_VERSION: "unsupported protocol version",
    Reason.CLIENT_IDENTIFIER_NOT_VALID: "client identifier not valid",
    Reason.BAD_USER_NAME_OR_PASSWORD: "bad user name or password",
    Reason.NOT_AUTHORIZED: "not authorized",
    Reason.SERVER_UNAVAILABLE: "server unavailable, retry later",
    Reason.SERVER_BUSY: "server busy, retry later",
    Reason.BANNED: "banned",
    Reason.SERVER_SHUTTING_DOWN: "server shutting down",
    Reason.BAD_AUTHENTICATION_METHOD: "authentication method not supported",
    Reason.KEEP_ALIVE_TIMEOUT: "keep alive timeout",
    Reason.SESSION_TAKEN_OVER: "session taken over by another connection",
    Reason.TOPIC_FILTER_INVALID: "topic filter invalid",
    Reason.TOPIC_NAME_INVALID: "topic name invalid",
    Reason.PACKET_IDENTIFIER_IN_USE: "packet identifier in use",
    Reason.PACKET_IDENTIFIER_NOT_FOUND: "packet identifier not found",
    Reason.RECEIVE_MAXIMUM_EXCEEDED: "receive maximum exceeded",
    Reason.TOPIC_ALIAS_INVALID: "topic alias invalid",
    Reason.PACKET_TOO_LARGE: "packet too large",
    Reason.MESSAGE_RATE_TOO_HIGH: "message rate too high",
    Reason.QUOTA_EXCEEDED: "quota exceeded",
    Reason.ADMINISTRATIVE_ACTION: "disconnected by an administrator",
    Reason.PAYLOAD_FORMAT_INVALID: "payload is not UTF-8",
    Reason.RETAIN_NOT_SUPPORTED: "retain not supported",
    Reason.QOS_NOT_SUPPORTED: "QoS not supported",
    Reason.USE_ANOTHER_SERVER: "server shutting down, use another server",
    Reason.SERVER_MOVED: "server moved",
    Reason.SHARED_SUBSCRIPTIONS_NOT_SUPPORTED: "shared subscriptions not supported",
    Reason.CONNECTION_RATE_EXCEEDED: "connection rate exceeded",
    Reason.MAXIMUM_CONNECT_TIME: "maximum connect time reached",
    Reason.SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED: "subscription identifiers not supported",
    Reason.WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED: "wildcard subscriptions not supported",
}


def reason_string(code: int) -> str | None:
    """The Reason String of a failure `code` (None for a success, which gets none)."""
    return REASON_STRINGS.get(code, "refused") if code >= 0x80 else None
