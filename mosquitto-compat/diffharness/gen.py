"""Random worlds (users, password_file, acl_file, mosquitto.conf) and scenarios, from one seed.

Everything is drawn from a `random.Random(seed)`, so a failing run is reproduced exactly by its seed.
The vocabulary is small on purpose: topics, rule filters, usernames and client ids share names
(``alice`` is a user, a client id and a topic level) so that rules, patterns (%u, %c, also inside a
level like ``x%u``), wildcards and ``$`` topics actually collide.

The files also carry the quirks mosquitto's readers accept: comments, blank lines, repeated spaces,
CRLF line ends, a second ``user`` block for the same user, duplicate password lines (the last usable
one wins), unusable hashes (the entry is dropped), blanks around ``user : hash``; and the
configuration sometimes takes its ``acl_file`` line from an ``include_dir``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import ClassVar

from mqtt_guard.auth.hashes import hash_password

# Usernames: plain ones, and the awkward ones mosquitto treats specially ('/' expands a %u level, '+'
# and '#' make pattern rules deny, a space is allowed in a `user` line).
USERS = ["alice", "bob", "carol", "dave", "u/x", "p+q", "h#", "sp ace"]
CLIENT_IDS = ["c1", "c2", "c3", "c4", "alice", "bob", "d/1", "x+y", "z#", "$c", "sp ace", "c5"]
LEVELS = ["a", "b", "c", "alice", "bob", "c1", "x", "xalice", "xc1", "", "u", "d"]
RULE_LEVELS = LEVELS + ["+", "+", "#", "%u", "%c", "%u", "%c", "x%u", "x%c"]
SUB_LEVELS = LEVELS + ["+", "+", "#"]
DOLLAR_FIRST = ["$SYS", "$x"]
ACCESS = [None, "read", "write", "readwrite", "deny", None, "read", "readwrite", "write"]
ACCESS_WORDS = {"read", "write", "readwrite", "deny"}


@dataclass
class Identity:
    client_id: str
    username: str | None
    password: str | None
    listener: int = 0

    def label(self) -> str:
        who = "anonymous" if self.username is None else repr(self.username)
        pw = "" if self.password is None else f"/{self.password}"
        at = f"@listener{self.listener}" if self.listener else ""
        return f"{self.client_id}({who}{pw}){at}"


@dataclass
class ScopeWorld:
    """allow_anonymous, password_file and acl_file of one mosquitto security scope."""

    passwd_lines: list[str]  # the file as written
    tries: dict[str, list[str]]  # per user: passwords worth trying (the current one first)
    acl_lines: list[str] | None  # None: no acl_file
    allow_anonymous: bool | None  # None: line absent
    with_password_file: bool
    acl_newline: str = "\n"
    acl_via_include: bool = False

    def describe(self, name: str = "") -> str:
        acl = "\n".join(f"    {line}" for line in self.acl_lines) if self.acl_lines is not None else "    (none)"
        pw = "\n".join(f"    {line[:60]}" for line in self.passwd_lines) if self.with_password_file else "    (none)"
        return (
            f"  {name}allow_anonymous: {self.allow_anonymous}\n  {name}password_file:\n{pw}\n"
            f"  {name}acl_file{' (via include_dir)' if self.acl_via_include else ''}:\n{acl}"
        )


@dataclass
class World:
    scopes: list[ScopeWorld]
    per_listener_settings: bool = False
    message_size_limit: int = 0  # 0: the line is absent
    global_lines: list[str] = field(default_factory=list)  # more mosquitto.conf lines (before the listeners)
    listener_lines: list[str] = field(default_factory=list)  # lines written after every `listener` line

    def describe(self) -> str:
        limit = f"  message_size_limit {self.message_size_limit}\n" if self.message_size_limit else ""
        limit += "".join(f"  {line}\n" for line in self.global_lines)
        limit += "".join(f"  {line} (every listener)\n" for line in self.listener_lines)
        if not self.per_listener_settings:
            return limit + self.scopes[0].describe()
        return (
            limit
            + "  per_listener_settings true\n"
            + "\n".join(s.describe(f"listener{i} ") for i, s in enumerate(self.scopes))
        )


@dataclass
class Publish:
    who: int  # index into Scenario.clients
    topic: str
    qos: int
    retain: bool
    pad: int = 0  # extra payload bytes (message_size_limit)
    props: dict | None = None  # MQTT 5 PUBLISH properties (paho names); only for MQTT 5 publishers


@dataclass
class Scenario:
    kind: str  # connect | pubsub | retained | will
    clients: list[Identity]
    subscriptions: dict[int, list[tuple[str, int]]] = field(default_factory=dict)
    publishes: list[Publish] = field(default_factory=list)
    will: tuple[int, str, int, bool] | None = None  # client, topic, qos, retain
    v5: list[int] = field(default_factory=list)  # the clients that speak MQTT 5 (the others 3.1.1)
    sub_options: dict[int, dict] = field(default_factory=dict)  # MQTT 5 subscription options per subscriber
    keepalive: dict[int, int] = field(default_factory=dict)  # MQTT 5 clients' keep alive (default 60)

    def describe(self) -> str:
        out = [f"  kind: {self.kind}"]
        for i, c in enumerate(self.clients):
            subs = self.subscriptions.get(i)
            proto = f" [MQTT 5, keep alive {self.keepalive.get(i, 60)}]" if i in self.v5 else ""
            opts = f" with options {self.sub_options[i]}" if i in self.sub_options else ""
            out.append(f"  client {i}: {c.label()}{proto}" + (f" subscribes {subs}{opts}" if subs else ""))
        for p in self.publishes:
            out.append(
                f"  client {p.who} publishes {p.topic!r} qos {p.qos}{' retained' if p.retain else ''}"
                f" ({p.pad} bytes of padding)" + (f" properties {p.props}" if p.props else "")
            )
        if self.will is not None:
            who, topic, qos, retain = self.will
            out.append(
                f"  client {who} has the will {topic!r} qos {qos}{' retained' if retain else ''} and drops "
                "its connection"
            )
        return "\n".join(out)


def _hash(password: str) -> str:
    return hash_password(password, salt_len=12, iterations=101)


class Generator:
    def __init__(self, seed: int) -> None:
        self.rnd = random.Random(seed)

    # -- files ----------------------------------------------------------------------------------
    def world(self, listeners: int = 1) -> World:
        scopes = [self.scope_world() for _ in range(listeners)]
        for scope in scopes[1:]:
            # Two acl_file lines from include_dir files both land on the default listener: a duplicate,
            # which both brokers refuse at start; on a reload mosquitto 2.0.11 then half-applies the
            # file while mqtt-guard keeps the previous settings (README: deliberate differences).
            scope.acl_via_include = scope.acl_via_include and not scopes[0].acl_via_include
        limit = self.rnd.choice([0, 0, 0, 16, 20])
        return World(scopes, per_listener_settings=listeners > 1, message_size_limit=limit)

    def scope_world(self) -> ScopeWorld:
        r = self.rnd
        users = [u for u in USERS if r.random() < 0.75]
        tries: dict[str, list[str]] = {}
        lines: list[str] = []
        for u in users:
            pw = f"pw-{r.randrange(10**6)}"
            tries[u] = [pw]
            roll = r.random()
            if roll < 0.1:  # an older line for the same user: the later one wins
                old = f"old-{r.randrange(10**6)}"
                lines.append(f"{u}:{_hash(old)}")
                tries[u].append(old)
            lines.append(f"  {u} :  {_hash(pw)}  " if r.random() < 0.08 else f"{u}:{_hash(pw)}")
            if roll > 0.93:  # a later line mosquitto cannot use: dropped, the earlier one stays
                lines.append(f"{u}:$7$101$c2hvcnQ=$" + "A" * 88 if r.random() < 0.5 else f"{u}:plain-{pw}")
                tries[u].append(f"plain-{pw}")
        if r.random() < 0.2:
            lines.insert(r.randrange(len(lines) + 1), "# a comment line")
        if r.random() < 0.15:
            lines.insert(r.randrange(len(lines) + 1), "no-colon-line")
        acl = self.acl_lines() if r.random() < 0.88 else None
        return ScopeWorld(
            lines,
            tries,
            acl,
            r.choice([True, True, True, False, None]),
            r.random() < 0.9,
            acl_newline="\r\n" if r.random() < 0.1 else "\n",
            acl_via_include=r.random() < 0.2,
        )

    def filter(self, levels: list[str], *, placeholders: bool) -> str:
        r = self.rnd
        n = r.choice([1, 1, 2, 2, 2, 3, 3])
        parts: list[str] = []
        pool = levels if placeholders else [lv for lv in levels if "%" not in lv]
        for i in range(n):
            level = r.choice(pool)
            if level == "#" and i != n - 1:
                level = "+"
            parts.append(level)
        if r.random() < 0.12:
            parts[0] = r.choice(DOLLAR_FIRST)
        f = "/".join(parts)
        return f if f else "a"

    def acl_lines(self) -> list[str]:
        r = self.rnd
        lines: list[str] = []

        def rule(kind: str) -> str:
            access = r.choice(ACCESS)
            if r.random() < 0.15:
                f = r.choice(["#", "+/#", "$x/#", "$SYS/#", "+", "+/+", "a/#", "#"])
            else:
                f = self.filter(RULE_LEVELS, placeholders=kind == "pattern" or r.random() < 0.15)
            sep = "  " if r.random() < 0.05 else " "
            line = f"{kind}{sep}{f}" if access is None else f"{kind}{sep}{access}{sep}{f}"
            return line + ("  " if r.random() < 0.05 else "")

        def patterns() -> None:
            for _ in range(r.choice([0, 0, 1, 2])):
                lines.append(rule("pattern"))

        if r.random() < 0.2:
            lines.append("# generated by the differential harness")
        if r.random() < 0.6:
            for _ in range(r.randint(1, 3)):
                lines.append(rule("topic"))
        patterns()
        blocks = r.sample(USERS, r.randint(0, len(USERS)))
        if blocks and r.random() < 0.2:
            blocks.append(blocks[0])  # a second block for the same user merges with the first
        for user in blocks:
            lines.append(f"user {user}" + (" " if r.random() < 0.05 else ""))
            for _ in range(r.randint(0, 4)):
                lines.append(rule("topic"))
            if r.random() < 0.3:
                patterns()
            if r.random() < 0.1:
                lines.append("")
        patterns()
        return lines

    # -- scenarios --------------------------------------------------------------------------------
    def identity(self, world: World, used: set[str]) -> Identity:
        r = self.rnd
        free = [c for c in CLIENT_IDS if c not in used] or [f"c{len(used) + 10}"]
        client_id = r.choice(free)
        used.add(client_id)
        listener = r.randrange(len(world.scopes))
        scope = world.scopes[listener]
        roll = r.random()
        if roll < 0.15:
            return Identity(client_id, None, None, listener)
        if roll < 0.17:  # an empty username: mosquitto treats it as no username, password or not
            return Identity(client_id, "", r.choice([None, "x"]), listener)
        if scope.with_password_file and scope.tries and roll < 0.9:
            user = r.choice(sorted(scope.tries))
            options = scope.tries[user]
            pw = options[0] if r.random() < 0.85 else r.choice(options)
            return Identity(client_id, user, pw, listener)
        user = r.choice(USERS)
        return Identity(client_id, user, r.choice([None, "nope", *scope.tries.get(user, ["x"])]), listener)

    def rule_filters(self, world: World, who: Identity | None = None) -> list[str]:
        """Filters of the rules that concern `who` (its block, the patterns), else of all rules."""
        mine, every = [], []
        for i, scope in enumerate(world.scopes):
            block: str | None = None
            for line in scope.acl_lines or []:
                words = [w for w in line.split(" ") if w]
                if not words:
                    continue
                if words[0] == "user":
                    block = line[5:].strip()
                    continue
                if words[0] not in ("topic", "pattern") or len(words) < 2:
                    continue
                f = " ".join(words[2:]) if words[1] in ACCESS_WORDS and len(words) > 2 else " ".join(words[1:])
                every.append(f)
                if who is not None and who.listener == i and (words[0] == "pattern" or block == who.username):
                    mine.append(f)
        return mine if mine and self.rnd.random() < 0.8 else every

    def instantiate(self, f: str, who: Identity) -> str:
        """A topic name the filter (with %u/%c replaced by someone's names) matches."""
        r = self.rnd
        ident = who if r.random() < 0.7 else Identity(r.choice(CLIENT_IDS), r.choice(USERS), None)
        f = f.replace("%u", ident.username if ident.username is not None else "%u").replace("%c", ident.client_id)
        levels = []
        for level in f.split("/"):
            if level == "+":
                levels.append(r.choice(LEVELS))
            elif level == "#":
                levels.extend(r.choice(LEVELS) for _ in range(r.choice([0, 0, 1, 2])))
            else:
                levels.append(level)
        return "/".join(levels)

    def topic(self, who: Identity, world: World | None = None) -> str:
        r = self.rnd
        rules = self.rule_filters(world, who) if world is not None else []
        if rules and r.random() < 0.6:
            t = self.instantiate(r.choice(rules), who)
            if t and "+" not in t and "#" not in t:
                return t
        if r.random() < 0.2:
            own = who.username if (who.username is not None and r.random() < 0.5) else who.client_id
            tail = r.choice(["", "/a", "/b", "/x/y"])
            t = r.choice(["", "a/", "x", "b/x"]) + own + tail
        else:
            n = r.choice([1, 2, 2, 3])
            t = "/".join(r.choice(LEVELS) for _ in range(n))
            if r.random() < 0.12:
                # (not $SYS/broker/connection/<id>/state: mosquitto lets clients publish there - for bridges
                # - while mqtt-guard's engine drops every $SYS publish; README, known differences)
                t = r.choice(DOLLAR_FIRST) + ("/" + t if t else "")
        if not t or "+" in t or "#" in t:
            t = "a/" + r.choice(["b", "c"])
        return t

    def subscription_filter(self, topics: list[str] | None = None) -> str:
        r = self.rnd
        if topics and r.random() < 0.7:  # a generalisation of a topic that will be published
            levels = r.choice(topics).split("/")
            for j in range(len(levels)):
                if r.random() < 0.3:
                    levels[j] = "+"
            if r.random() < 0.3:
                levels = levels[: r.randrange(len(levels)) + 1] + ["#"]
            f = "/".join(levels)
            return f if f else "#"
        if r.random() < 0.6:
            return r.choice(["#", "+/#", "$SYS/#", "$x/#", "+/+", "a/#", "#"])
        return self.filter(SUB_LEVELS, placeholders=False)

    def scenario(self, world: World) -> Scenario:
        r = self.rnd
        used: set[str] = set()
        roll = r.random()
        if roll < 0.15:
            return Scenario("connect", [self.identity(world, used)])
        kind = "retained" if roll < 0.27 else ("will" if roll < 0.35 else "pubsub")
        n_subs = r.randint(1, 3)
        n_pubs = 1 if kind == "will" else r.randint(1, 2)
        clients = [self.identity(world, used) for _ in range(n_subs + n_pubs)]
        s = Scenario(kind, clients)
        if kind == "will":
            s.will = (n_subs, self.topic(clients[n_subs], world), r.choice([0, 1]), r.random() < 0.2)
            topics = [s.will[1]]
        else:
            for _ in range(r.randint(1, 4)):
                who = n_subs + r.randrange(n_pubs)
                s.publishes.append(
                    Publish(
                        who,
                        self.topic(clients[who], world),
                        r.choice([0, 1]),
                        kind == "retained" or r.random() < 0.05,
                        r.choice([0, 0, 4, 12]),
                    )
                )
            topics = [p.topic for p in s.publishes]
        for i in range(n_subs):
            s.subscriptions[i] = [
                (self.subscription_filter(topics), r.choice([0, 1, 1])) for _ in range(r.randint(1, 3))
            ]
        return s


# MQTT 5 PUBLISH properties a broker passes through to subscribers (MQTT-3.3.2-*), paho's names
PROPERTY_CHOICES: list[tuple[str, list]] = [
    ("UserProperty", [[("k", "v")], [("k", "v"), ("k", "w"), ("a", "")], [("ünï", "cödé")]]),
    ("ContentType", ["text/plain", "application/json", ""]),
    ("CorrelationData", [b"\x00\x01", b"req-17", b""]),
    ("ResponseTopic", ["a/reply", "x/alice"]),
    ("MessageExpiryInterval", [3600, 60]),
    ("PayloadFormatIndicator", [0, 1]),
]


class Generator5(Generator):
    """Scenarios with a mix of MQTT 5 and 3.1.1 clients; MQTT 5 publishers attach properties.

    The 3.1.1 scenario is drawn first (the same vocabulary and collisions), then which clients speak
    MQTT 5 and the properties of their PUBLISHes, so every kind of scenario (connect, pubsub, retained,
    will) is covered with both protocol levels on both ends.
    """

    # mosquitto.conf keys that MQTT 5 clients see in CONNACK (drawn once per pair: mqtt-guard reads them at
    # start only, while mosquitto reloads some of them on SIGHUP)
    GLOBAL_KEYS: ClassVar[list[tuple[str, list[int]]]] = [
        ("max_keepalive", [30, 100, 65535]),
        ("max_inflight_messages", [0, 5, 20]),
        ("max_packet_size", [2000, 100000]),
    ]
    LISTENER_KEYS: ClassVar[list[tuple[str, list[int]]]] = [("max_topic_alias", [0, 5, 10])]

    def world(self, listeners: int = 1) -> World:
        w = super().world(listeners)
        keys = getattr(self, "_keys", None)
        if keys is None:
            r = self.rnd
            pick = [(k, r.choice(values)) for k, values in self.GLOBAL_KEYS + self.LISTENER_KEYS if r.random() < 0.5]
            keys = self._keys = {k: v for k, v in pick}
        w.global_lines = [f"{k} {v}" for k, v in keys.items() if k not in dict(self.LISTENER_KEYS)]
        w.listener_lines = [f"{k} {v}" for k, v in keys.items() if k in dict(self.LISTENER_KEYS)]
        return w

    def scenario(self, world: World) -> Scenario:
        s = super().scenario(world)
        r = self.rnd
        s.v5 = [i for i in range(len(s.clients)) if r.random() < 0.5]
        s.keepalive = {i: r.choice([60, 60, 0, 200]) for i in s.v5}
        for p in s.publishes:
            if p.who in s.v5:
                # mosquitto 2.0.11 answers an MQTT 5 QoS 1 PUBLISH over message_size_limit with PUBACK 0x95, a
                # code MQTT 5 does not allow in PUBACK: paho drops the connection as malformed (KEYS.md,
                # measured with raw packets), so MQTT 5 publishers stay under the limit
                p.pad = 0
                if r.random() < 0.7:
                    p.props = {name: r.choice(values) for name, values in PROPERTY_CHOICES if r.random() < 0.4}
        for i in s.subscriptions:
            if i in s.v5 and r.random() < 0.3:  # Retain As Published, Retain Handling (0 send, 1 if new, 2 never)
                s.sub_options[i] = {"retainAsPublished": r.random() < 0.5, "retainHandling": r.choice([0, 1, 2])}
        return s
