"""MQTT 5 codec on the hot path: the `mqtt5` package (a Rust sans-I/O codec, by the aiomqtt author)
against the engine's hand-written one (engine/mqtt5.py, and the reader's inline PUBLISH scan in
engine/handler.py), issue 16 item 7. Same process, same minute, interleaved rounds; median of rounds.

What is measured is what the broker does per packet: decoding a client's PUBLISH (QoS 0 and 1, without
and with properties), encoding a delivery, and decoding a CONNECT (once per connection). The engine's
decode is the reader's work (topic bytes looked up in its per-connection cache, packet id, property
length; properties parsed only when present), so both sides start from the same bytes in a buffer.

    python tests/bench/bench_codec.py [--rounds 5] [--json out.json]

Needs the `mqtt5` package (pinned in the test extras); without it the script says so and exits 0.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from mqtt_guard.engine import mqtt5 as ours
from mqtt_guard.engine.packets import parse_connect
from mqtt_guard.engine.protocol import Cursor

try:
    import mqtt5 as rust
except ImportError:  # pragma: no cover - the package is in the test extras
    rust = None

PAYLOAD = b"x" * 64
TOPIC = "bench/sensor/42"
PROPS = [("k", "v"), ("site", "plant-7")]


def engine_decode(buf: bytes, topics: dict[bytes, str]) -> tuple[str, int, int, object]:
    """The reader's PUBLISH scan for an MQTT 5 packet whose remaining length fits one byte."""
    first, length = buf[0], buf[1]
    start, stop = 2, 2 + length
    te = start + 2 + ((buf[start] << 8) | buf[start + 1])
    topic_raw = buf[start + 2 : te]
    topic = topics.get(topic_raw)
    if topic is None:
        topic = topics[topic_raw] = topic_raw.decode()
    pid = 0
    if first & 0x06:
        pid = (buf[te] << 8) | buf[te + 1]
        te += 2
    props: object = None
    if buf[te]:  # a property block: parsed only then
        c = Cursor(buf[te:stop], "PUBLISH")
        props = ours.read_properties(c, "PUBLISH")
        te += c.pos
    else:
        te += 1
    return topic, pid, stop - te, props


def cases() -> dict[str, tuple[object, object]]:
    assert rust is not None
    qos1 = rust.QoS.AT_LEAST_ONCE
    plain0 = rust.PublishPacket(TOPIC, PAYLOAD).write()
    plain1 = rust.PublishPacket(TOPIC, PAYLOAD, qos=qos1, packet_id=7).write()
    rich1 = rust.PublishPacket(
        TOPIC, PAYLOAD, qos=qos1, packet_id=7, content_type="application/json", user_properties=PROPS
    ).write()
    connect = rust.ConnectPacket(
        "device-42", username="dev", password=b"secret", session_expiry_interval=3600, receive_max=20, keep_alive=60
    ).write()
    connect_body = connect[2:] if connect[1] < 0x80 else connect[3:]
    topics: dict[bytes, str] = {}
    forwarded = ours.forwarded_block({ours.CONTENT_TYPE: "application/json", ours.USER_PROPERTY: PROPS})
    topic_raw = TOPIC.encode()

    def rust_read(buf: bytes) -> object:
        return lambda: rust.read(memoryview(buf))

    return {
        "decode PUBLISH QoS 0, no properties": (rust_read(plain0), lambda: engine_decode(plain0, topics)),
        "decode PUBLISH QoS 1, no properties": (rust_read(plain1), lambda: engine_decode(plain1, topics)),
        "decode PUBLISH QoS 1, 3 properties": (rust_read(rich1), lambda: engine_decode(rich1, topics)),
        "encode PUBLISH QoS 1, no properties": (
            lambda: rust.PublishPacket(TOPIC, PAYLOAD, qos=qos1, packet_id=7).write(),
            lambda: ours.encode_publish(topic_raw, PAYLOAD, 1, False, False, 7),
        ),
        "encode PUBLISH QoS 1, 3 properties": (
            lambda: rust.PublishPacket(
                TOPIC, PAYLOAD, qos=qos1, packet_id=7, content_type="application/json", user_properties=PROPS
            ).write(),
            lambda: ours.encode_publish(topic_raw, PAYLOAD, 1, False, False, 7, forwarded),
        ),
        "decode CONNECT (once per connection)": (rust_read(connect), lambda: parse_connect(connect_body)),
    }


def per_call_ns(fn: object, number: int) -> float:
    return timeit.timeit(fn, number=number) / number * 1e9  # type: ignore[arg-type]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--number", type=int, default=200_000)
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    if rust is None:
        print("bench_codec: the mqtt5 package is not installed (pip install -e '.[test]'); skipped")
        return 0
    results = {}
    for name, (theirs, mine) in cases().items():
        a, b = [], []
        for _ in range(args.rounds):  # interleaved: both see the same minute of this machine
            a.append(per_call_ns(theirs, args.number))
            b.append(per_call_ns(mine, args.number))
        ra, rb = statistics.median(a), statistics.median(b)
        results[name] = {"mqtt5_ns": round(ra), "engine_ns": round(rb), "engine_vs_mqtt5": round(rb / ra, 2)}
        print(f"{name:40s} mqtt5 {ra:7.0f} ns   engine {rb:7.0f} ns   engine/mqtt5 {rb / ra:5.2f}x")
    if args.json:
        Path(args.json).write_text(
            json.dumps({"mqtt5_version": getattr(rust, "__version__", "0.8.0"), **results}, indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
