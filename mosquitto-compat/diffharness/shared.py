"""Shared subscriptions (`$share/GROUP/FILTER`) under an acl_file: fixed cases, run on mosquitto and/or mqtt-guard.

The findings in mosquitto-compat/SHARED.md were measured with these cases against mosquitto 2.0.11
(`differential.py --shared --mosquitto-only` prints them); `differential.py --shared` runs the same cases
on both brokers and reports every difference, for the engine that implements shared subscriptions.

Every case is one acl_file, users m1..m4 and p (password = user name), members that subscribe in the
order listed (each with its own client id and protocol level), and publishes made one after the other
by `p` (each acknowledged and followed by a round trip on every member, so the order in which the broker
picks members is observable). Observed per member: the SUBACK codes, and every message received
(payload index, topic, QoS, retain flag).
"""

from __future__ import annotations

import asyncio
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from mqtt_guard.auth.hashes import hash_password

from .brokers import BrokerProc, free_port, guard_proc, mosquitto_proc, run_as_line
from .mqtt import Client
from .mqtt5 import Client5

USERS = ["m1", "m2", "m3", "m4", "p"]


@dataclass
class Member:
    name: str  # client id (and user name unless `user` is given)
    filters: list[tuple[str, int]]
    v5: bool = False
    user: str | None = None
    options: dict | None = None  # MQTT 5 subscription options (paho's SubscribeOptions arguments)


@dataclass
class SharedCase:
    name: str
    what: str  # the question the case answers
    acl: list[str]
    members: list[Member]
    publishes: list[tuple[str, int]]  # topic, QoS (published by user p, one after the other)
    retained_first: list[str] = field(default_factory=list)  # topics p publishes retained before the members subscribe
    unsubscribe_after: int | None = None  # after this many publishes the first member unsubscribes its filters
    publisher_v5: bool = False

    def describe(self) -> str:
        lines = [f"case {self.name}: {self.what}", "  acl_file:"]
        lines += [f"    {line}" for line in self.acl]
        for m in self.members:
            who = f"{m.name} as {m.user}" if m.user else m.name
            opts = f" with options {m.options}" if m.options else ""
            lines.append(f"  {who} ({'MQTT 5' if m.v5 else 'MQTT 3.1.1'}) subscribes {m.filters}{opts}")
        if self.retained_first:
            lines.append(f"  p first publishes retained (QoS 1): {self.retained_first}")
        lines.append(f"  p ({'MQTT 5' if self.publisher_v5 else 'MQTT 3.1.1'}) publishes, in order: {self.publishes}")
        if self.unsubscribe_after is not None:
            lines.append(f"  {self.members[0].name} unsubscribes after publish #{self.unsubscribe_after}")
        return "\n".join(lines)


ALL_READ = ["user m1", "topic read t/#", "user m2", "topic read t/#", "user m3", "topic read t/#", "user m4"]
ALL_READ += ["topic read t/#", "user p", "topic write t/#", "topic write $share/#"]
SIX = [("t/1", 1)] * 6
ODD = ["$share/g", "$share/g/", "$share//t/1", "$share/g+/t/1", "$share/g#/t/1", "$share/g/#", "$share/g/$SYS/#"]


def cases() -> list[SharedCase]:
    share = [("$share/g/t/#", 1)]
    return [
        SharedCase(
            "rr-311",
            "how deliveries are spread among three 3.1.1 members",
            ALL_READ,
            [Member("m1", share), Member("m2", share), Member("m3", share)],
            SIX,
        ),
        SharedCase(
            "rr-mixed",
            "the same with MQTT 5 members (and an MQTT 5 publisher)",
            ALL_READ,
            [Member("m1", share, v5=True), Member("m2", share), Member("m3", share, v5=True)],
            SIX,
            publisher_v5=True,
        ),
        SharedCase(
            "deny-read",
            "a member without read access on the topic: SUBACK, and what happens to the messages it is picked for",
            ["user m1", "topic read t/#", "user m2", "topic read other/#", "user p", "topic write t/#"],
            [Member("m1", share), Member("m2", share), Member("m3", share, v5=True)],
            SIX,
            publisher_v5=True,
        ),
        SharedCase(
            "rule-on-share-string",
            "which string the ACL checks: rules written on the $share/... filter only, or on FILTER only",
            [
                "user m1",
                "topic read $share/g/t/#",
                "user m2",
                "topic read t/#",
                "user m3",
                "topic deny $share/#",
                "topic read t/#",
                "user p",
                "topic write t/#",
            ],
            [Member("m1", share), Member("m2", share), Member("m3", share, v5=True)],
            SIX,
        ),
        SharedCase(
            "no-rules",
            "members with no rule at all (acl_file set): SUBACK for 3.1.1 and MQTT 5",
            ["user p", "topic write t/#"],
            [Member("m1", share), Member("m2", share, v5=True)],
            [("t/1", 1)] * 2,
        ),
        SharedCase(
            "groups-and-plain",
            "two groups and a plain subscriber on the same topics; a client in a group and plain at once",
            ALL_READ,
            [
                Member("m1", [("$share/g1/t/#", 1)]),
                Member("m2", [("$share/g1/t/+", 1)]),
                Member("m3", [("$share/g2/t/#", 1), ("t/#", 1)], v5=True),
                Member("m4", [("t/#", 0)]),
            ],
            [("t/1", 1)] * 4,
        ),
        SharedCase(
            "qos",
            "granted QoS per member; a QoS 0 and a QoS 1 publish",
            ALL_READ,
            [Member("m1", [("$share/g/t/#", 0)]), Member("m2", [("$share/g/t/#", 2)], v5=True)],
            [("t/1", 1), ("t/1", 1), ("t/1", 0), ("t/1", 0), ("t/2", 2), ("t/2", 2)],
        ),
        SharedCase(
            "retained",
            "retained messages when a shared subscription is made (MQTT 5 says: none)",
            ALL_READ,
            [Member("m1", share), Member("m2", share, v5=True), Member("m3", [("t/#", 1)])],
            [("t/1", 1)] * 2,
            retained_first=["t/r"],
        ),
        SharedCase(
            "unsubscribe",
            "a member that unsubscribes leaves the rotation",
            ALL_READ,
            [Member("m1", share), Member("m2", share), Member("m3", share)],
            SIX,
            unsubscribe_after=2,
        ),
        SharedCase(
            "odd-filters-311",
            "SUBACK (or disconnection) for malformed or odd shared filters, one filter per 3.1.1 client",
            ALL_READ,
            [Member(f"v3-{f}", [(f, 1)], user="m1") for f in ODD],
            [("t/1", 1)],
        ),
        SharedCase(
            "odd-filters-5",
            "the same for MQTT 5 clients (paho itself refuses `$share/g+/...` and `$share/g#/...`)",
            ALL_READ,
            [Member(f"v5-{f}", [(f, 1)], v5=True, user="m2") for f in ODD if not ({"+", "#"} & set(f[7:9]))],
            [("t/1", 1)],
        ),
        SharedCase(
            "no-local",
            "MQTT 5 subscription options on a shared subscription: No Local (a protocol error in MQTT 5), "
            "Retain As Published",
            ALL_READ,
            [
                Member("m1", share, v5=True, options={"noLocal": True}),
                Member("m2", share, v5=True, options={"retainAsPublished": True}),
            ],
            [("t/1", 1)] * 2,
        ),
        SharedCase(
            "publish-to-share",
            "a PUBLISH to a $share/... topic name (write rule present): the PUBACK",
            ALL_READ,
            [Member("m1", [("$share/g/t/#", 1), ("#", 1)], v5=True)],
            [("$share/g/t/1", 1)],
            publisher_v5=True,
        ),
    ]


# -- running ---------------------------------------------------------------------------------------


class Broker:
    """One broker for all the cases: each case's acl_file is written over the last one and applied with
    SIGHUP (both brokers reload acl_file on SIGHUP), which is much faster than a start per case."""

    RELOADED = {"mosquitto": "Reloading config.", "mqtt-guard": ("reloaded ", "reload failed")}

    def __init__(self, name: str, directory: Path, redis_url: str, prefix: str) -> None:
        self.name = name
        self.port = free_port()
        passwd, self.acl, conf = directory / f"{name}.passwd", directory / f"{name}.acl", directory / f"{name}.conf"
        passwd.write_text("".join(f"{u}:{hash_password(u, salt_len=12, iterations=101)}\n" for u in USERS))
        self.acl.write_text("")
        conf.write_text(
            f"{run_as_line()}\nlistener {self.port} 127.0.0.1\nallow_anonymous false\n"
            f"password_file {passwd}\nacl_file {self.acl}\n"
        )
        log = directory / f"{name}.log"
        self.proc: BrokerProc = (
            mosquitto_proc(conf, self.port, log)
            if name == "mosquitto"
            else guard_proc(conf, self.port, log, redis_url, prefix)
        )
        self.reloads = 0

    async def load(self, case: SharedCase) -> None:
        """Start on the case's files, or (when running) reload them. (The first case is not loaded by a
        SIGHUP: mqtt-guard opens its listener before it handles SIGHUP.)"""
        self.acl.write_text("".join(f"{line}\n" for line in case.acl))
        if not self.proc.alive():
            self.proc.start()
            await self.proc.wait_ready()
            return
        self.reloads += 1
        self.proc.sighup()
        await self.proc.wait_count(self.RELOADED[self.name], self.reloads)
        probe = await Client.connect(self.port, "harness-reload-probe", "p", "p")  # the reload has completed
        await probe.close()


async def _client(port: int, name: str, v5: bool, user: str | None = None) -> Client | Client5:
    cls = Client5 if v5 else Client
    return await cls.connect(port, name, user or name, user or name)


async def run_case(port: int, case: SharedCase) -> dict:
    """Run one case on the broker at `port`; what the clients observed."""
    out: dict = {}
    pub = await _client(port, "p", case.publisher_v5)
    out["connack p"] = pub.rc
    for topic in case.retained_first:
        await pub.publish(topic, b"retained", 1, True)
    members = []
    for m in case.members:
        c = await _client(port, m.name, m.v5, m.user)
        out[f"connack {m.name}"] = c.rc
        try:
            if m.options:
                out[f"suback {m.name}"] = await c.subscribe(m.filters, options=m.options)  # type: ignore[call-arg]  # only MQTT 5 members have options
            else:
                out[f"suback {m.name}"] = await c.subscribe(m.filters)
        except (ConnectionError, TimeoutError) as exc:
            out[f"suback {m.name}"] = f"error: {type(exc).__name__}"
        members.append(c)
    await _flush(members)
    for k, (topic, qos) in enumerate(case.publishes):
        if case.unsubscribe_after is not None and k == case.unsubscribe_after and not members[0].closed:
            await members[0].unsubscribe([f for f, _ in case.members[0].filters])
        try:
            ack = await pub.publish(topic, f"msg-{k}".encode(), qos, False)
            if isinstance(pub, Client5) and ack is not None:
                out[f"puback {k}"] = ack
        except (ConnectionError, TimeoutError) as exc:
            out[f"publish {k}"] = f"error: {type(exc).__name__}"
        await _flush([pub, *members])
    for topic in case.retained_first:  # clean up
        await pub.publish(topic, b"", 1, True)
    for m, c in zip(case.members, members, strict=True):
        out[f"received {m.name}"] = [
            (msg.payload.decode(), msg.topic, msg.qos, msg.retain) for msg in c.messages if msg.payload
        ]
        out[f"closed by broker {m.name}"] = c.closed
        await c.close()
    await pub.close()
    return out


async def _flush(clients: list) -> None:
    """A round trip on every client, then a short quiet window (mqtt-guard writes from a task)."""
    for c in clients:
        if not c.closed:
            try:
                await c.ping()
            except (ConnectionError, TimeoutError):
                pass
    await asyncio.sleep(0.02)


async def run(
    *, redis_url: str, prefix: str, guard: bool = True, workdir: str | None = None, only: str | None = None
) -> list[tuple[SharedCase, list[dict]]]:
    """Run every case (or the one named `only`) on mosquitto and, with `guard`, mqtt-guard; per case the
    observations of each broker (mosquitto first)."""
    base = Path(workdir or tempfile.mkdtemp(prefix="mqg-shared-"))
    base.mkdir(parents=True, exist_ok=True)
    names = ["mosquitto", "mqtt-guard"] if guard else ["mosquitto"]
    brokers = [Broker(name, base, redis_url, prefix) for name in names]
    results = []
    try:
        for case in cases():
            if only is None or case.name == only:
                await asyncio.gather(*(b.load(case) for b in brokers))
                results.append((case, [await run_case(b.port, case) for b in brokers]))
    finally:
        for b in brokers:
            b.proc.stop()
    return results


def report(results: list[tuple[SharedCase, list[dict]]]) -> tuple[str, int]:
    """The cases with what each broker observed (only the differing keys when there are two); the number
    of cases that differ."""
    lines, differing = [], 0
    for case, seen in results:
        lines.append(case.describe())
        if len(seen) == 1:
            lines += [f"  {key}: {value}" for key, value in sorted(seen[0].items())]
            continue
        keys = sorted(set(seen[0]) | set(seen[1]))
        diff = [k for k in keys if seen[0].get(k) != seen[1].get(k)]
        differing += bool(diff)
        lines.append("  (same on both)" if not diff else "  DIFFERENCE")
        for k in diff:
            lines.append(f"  {k}:\n    mosquitto:  {seen[0].get(k)}\n    mqtt-guard: {seen[1].get(k)}")
    return "\n".join(lines), differing
