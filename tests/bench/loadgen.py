"""Raw-socket MQTT load generator: one benchmark run per invocation.

Runs as a separate process from the harness (``run.py``) so that its CPU can be
reported. Every MQTT client is a forked process using pre-encoded packets from
``mqttraw``. The coordinator (this process's main thread) sets the clients up,
releases the publishers, samples CPU from ``/proc`` every 25 ms, decides when
the run is over and prints ONE JSON object on stdout.

Cases (see README.md):
  fanin_qos0    --pubs 4 --count N      4 publishers -> 1 subscriber on bench/#
  fanin_qos1    --pubs 4 --count N --window W   (publishers QoS1, subscriber QoS1)
  fanout_qos0   --subs 10 --count N     1 publisher -> 10 subscribers on bench/fan
  --level 5     any case with MQTT 5 clients (empty property blocks) instead of MQTT 3.1.1
  connect_rate  --concurrency C --duration S    CONNECT+CONNACK+DISCONNECT loops
  latency       --rate R --duration S   paced QoS0, timestamp in payload
  iot           --clients 1000 --client-rate 2 --duration S --workers 4
                                        1000 connected clients (keepalive 60), each publishing a
                                        few QoS0 messages/s to its own topic -> 1 subscriber;
                                        latency and broker CPU per message

Standard library only. Usable stand-alone, e.g.
  python tests/bench/loadgen.py fanin_qos0 --port 1883 --count 5000 --broker-pids 1234
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import queue
import socket
import struct
import sys
import time
import traceback

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import mqttraw as mr  # type: ignore[no-redef]  # run as a script: the sibling module by its own name
else:
    from . import mqttraw as mr

CLK_TCK = os.sysconf("SC_CLK_TCK")
NCPU = os.cpu_count() or 1
SAMPLE_INTERVAL = 0.025

CASES = ("fanin_qos0", "fanin_qos1", "fanout_qos0", "connect_rate", "latency", "iot")


# --------------------------------------------------------------------------
# /proc sampling
# --------------------------------------------------------------------------


def proc_ticks(pid: int) -> int | None:
    """utime+stime of one process in clock ticks, None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rindex(b")") + 2 :].split()
    # fields[0] is field 3 (state); utime is field 14, stime field 15
    return int(fields[11]) + int(fields[12])


def descendants(pid: int) -> list[int]:
    out: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            tids = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{p}/task/{tid}/children") as f:
                    kids = [int(x) for x in f.read().split()]
            except OSError:
                continue
            out.extend(kids)
            todo.extend(kids)
    return out


def machine_ticks() -> tuple[int, int, int]:
    """(total, idle+iowait, steal) jiffies summed over all CPUs."""
    with open("/proc/stat") as f:
        parts = f.readline().split()
    vals = [int(x) for x in parts[1:]]
    total = sum(vals[:8])  # user nice system idle iowait irq softirq steal (guest is in user)
    idle = vals[3] + vals[4]
    steal = vals[7] if len(vals) > 7 else 0
    return total, idle, steal


class Sampler:
    def __init__(self, groups: dict[str, list[int]]):
        self.groups = groups
        self.samples: list[tuple[float, dict[str, int], tuple[int, int, int]]] = []
        # remember the last value of every pid so a process that exits mid-run
        # keeps contributing what it had used
        self._last: dict[int, int] = {}

    def sample(self) -> None:
        vals = {}
        for name, pids in self.groups.items():
            tot = 0
            for pid in pids:
                t = proc_ticks(pid)
                if t is None:
                    t = self._last.get(pid, 0)
                else:
                    self._last[pid] = t
                tot += t
            vals[name] = tot
        self.samples.append((time.monotonic(), vals, machine_ticks()))

    def _bracket(self, t0: float, t1: float):
        s = self.samples
        a = s[0]
        for smp in s:
            if smp[0] <= t0:
                a = smp
            else:
                break
        b = s[-1]
        for smp in s:
            if smp[0] >= t1:
                b = smp
                break
        return a, b

    def cpu_pct(self, group: str, t0: float, t1: float) -> float | None:
        if len(self.samples) < 2 or group not in self.groups or not self.groups[group]:
            return None
        a, b = self._bracket(t0, t1)
        dt = b[0] - a[0]
        if dt <= 0:
            return None
        return round((b[1][group] - a[1][group]) / CLK_TCK / dt * 100.0, 1)

    def machine(self, t0: float, t1: float) -> tuple[float | None, float | None]:
        """(busy, steal) % of the whole machine, out of NCPU*100.

        Busy is wall time minus idle: on a tickless kernel the idle counter is
        exact while user/system are tick samples that miss short bursts (a
        1 kHz paced run showed less "busy" than its own processes used)."""
        if len(self.samples) < 2:
            return None, None
        a, b = self._bracket(t0, t1)
        dt = b[0] - a[0]
        if dt <= 0:
            return None, None
        idle = (b[2][1] - a[2][1]) / CLK_TCK / dt * 100.0
        steal = (b[2][2] - a[2][2]) / CLK_TCK / dt * 100.0
        busy = min(NCPU * 100.0, max(0.0, NCPU * 100.0 - idle))
        return round(busy, 1), round(steal, 1)

    def recent_cpu(self, group: str, window: float) -> float | None:
        if len(self.samples) < 2:
            return None
        b = self.samples[-1]
        a = self.samples[0]
        for smp in reversed(self.samples):
            if b[0] - smp[0] >= window:
                a = smp
                break
        dt = b[0] - a[0]
        if dt <= 0:
            return None
        return (b[1][group] - a[1][group]) / CLK_TCK / dt * 100.0


# --------------------------------------------------------------------------
# workers (forked processes)
# --------------------------------------------------------------------------


class Shared:
    """Shared-memory progress counters between the coordinator and workers."""

    def __init__(self, ctx, nsubs: int, npubs: int):
        self.sub_count = ctx.Array("q", max(nsubs, 1), lock=False)
        self.sub_first = ctx.Array("d", max(nsubs, 1), lock=False)
        self.sub_last = ctx.Array("d", max(nsubs, 1), lock=False)
        self.pub_done = ctx.Array("d", max(npubs, 1), lock=False)  # time the publisher finished, 0 = busy
        self.pub_progress = ctx.Array("q", max(npubs, 1), lock=False)  # acked (QoS1) / sent
        self.go_time = ctx.Value("d", 0.0, lock=False)


def _worker_main(fn, role, idx, a, shared, ready_q, result_q, go, stop):
    res = {"role": role, "idx": idx}
    try:
        fn(idx, a, shared, ready_q, go, stop, res)
    except BaseException as e:  # report every failure to the coordinator
        res["error"] = f"{type(e).__name__}: {e}"
        res["traceback"] = traceback.format_exc(limit=4)
        try:
            ready_q.put(("error", role, idx, res["error"]))
        except Exception:
            pass
    result_q.put(res)


def _close(sock: socket.socket, send_disconnect: bool = True) -> None:
    try:
        if send_disconnect:
            sock.settimeout(1.0)
            sock.sendall(mr.encode_disconnect())
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


def topic_prefix(a) -> str:
    return f"bench/{a.run_id}/"


def sub_worker(idx, a, sh, ready_q, go, stop, res):
    """Subscriber: QoS0 fast counting, QoS1 with PUBACKs, or latency capture."""
    cid = f"bs-{a.run_id}-{idx}"
    sock, reader = mr.mqtt_connect(
        a.host, a.port, cid, a.username, a.password, timeout=a.connect_timeout, rcvbuf=a.rcvbuf, level=a.level
    )
    if a.case == "fanout_qos0":
        filt, tprefix = "bench/fan", "bench/fan"
    else:
        filt, tprefix = "bench/#", topic_prefix(a)
    sub_qos = 1 if a.case == "fanin_qos1" else 0
    res["granted_qos"] = mr.mqtt_subscribe(sock, reader, filt, sub_qos, timeout=a.connect_timeout, level=a.level)
    res["filter"] = filt
    expected = a.expected_per_sub
    leftover = bytes(reader.buf)  # anything that arrived right behind the SUBACK
    ready_q.put(("ready", "sub", idx, None))

    count = 0
    first = 0.0
    last = 0.0
    extra_info: dict = {}
    counts = sh.sub_count
    lasts = sh.sub_last
    recv = sock.recv
    mono = time.monotonic
    big = 1 << 18
    complete = False

    if a.case in ("fanin_qos0", "fanout_qos0"):
        payload = b"\0" * a.payload
        if a.case == "fanout_qos0":
            sample = mr.encode_publish("bench/fan", payload, level=a.level)
            skip = ()
        else:
            sample = mr.encode_publish(f"{tprefix}0", payload, level=a.level)
            skip = (len(sample) - a.payload - 1 - (a.level >= 5),)  # publisher index digit
        fc = mr.FrameCounter(sample[: len(sample) - a.payload], len(sample), tprefix, skip=skip, level=a.level)
        feed = fc.feed

        def handle(data):
            return feed(data)
    elif a.case == "fanin_qos1":
        reader = mr.PacketReader()
        level = a.level
        stats = {"dup_flag": 0, "qos_seen": {}, "foreign": 0, "other": 0}
        puback = mr.encode_puback

        def handle(data):
            reader.feed(data)
            acks = []
            got = 0
            for ptype, flags, body in reader.packets():
                if ptype == mr.PUBLISH:
                    topic, qos, pid, _pl = mr.parse_publish(flags, body, level)
                    if qos:
                        acks.append(puback(pid))
                    if flags & 0x08:
                        stats["dup_flag"] += 1
                    if topic.startswith(tprefix):
                        got += 1
                        stats["qos_seen"][qos] = stats["qos_seen"].get(qos, 0) + 1
                    else:
                        stats["foreign"] += 1
                else:
                    stats["other"] += 1
            if acks:
                sock.sendall(b"".join(acks))
            return got

        extra_info = stats
    else:  # latency, iot
        reader = mr.PacketReader()
        level = a.level
        lat: list[int] = []
        stats = {"foreign": 0, "other": 0}
        unpack = struct.unpack_from

        def handle(data):
            now = time.monotonic_ns()
            reader.feed(data)
            got = 0
            for ptype, flags, body in reader.packets():
                if ptype == mr.PUBLISH:
                    topic, _qos, _pid, pl = mr.parse_publish(flags, body, level)
                    if topic.startswith(tprefix) and len(pl) >= 8:
                        lat.append(now - unpack("!q", pl, 0)[0])
                        got += 1
                    else:
                        stats["foreign"] += 1
                else:
                    stats["other"] += 1
            return got

        extra_info = stats

    sock.settimeout(0.1)
    # only QoS0 subscribers nap after short reads (fewer, bigger reads); a QoS1
    # subscriber acks at once, the broker may allow only a few un-acked messages
    batch_sleep = a.case in ("fanin_qos0", "fanout_qos0")
    if leftover:
        n = handle(leftover)
        if n:
            count += n
            first = last = mono()
            counts[idx] = count
            lasts[idx] = last
            sh.sub_first[idx] = first
    while True:
        try:
            data = recv(big)
        except TimeoutError:
            if stop.is_set():
                break
            continue
        if not data:
            res["closed_by_broker"] = True
            break
        n = handle(data)
        if n:
            last = mono()
            if not count:
                first = last
                sh.sub_first[idx] = first
            count += n
            counts[idx] = count
            lasts[idx] = last
            if count >= expected and not complete:
                complete = True
        if complete:
            if stop.is_set():
                break
        elif batch_sleep and len(data) < 16384:
            time.sleep(0.001)
    res.update(count=count, first=first, last=last, expected=expected, **extra_info)
    if a.case in ("fanin_qos0", "fanout_qos0"):
        res.update(
            fast_frames=fc.fast_frames,
            slow_frames=fc.slow_frames,
            other_packets=fc.other_packets,
            foreign=fc.foreign_publishes,
        )
        if fc.other_types:
            res["other_types"] = fc.other_types
    if a.case in ("latency", "iot"):
        res["lat_ns"] = lat
    _close(sock, not res.get("closed_by_broker"))


def pub_worker(idx, a, sh, ready_q, go, stop, res):
    cid = f"bp-{a.run_id}-{idx}"
    sock, reader = mr.mqtt_connect(
        a.host, a.port, cid, a.username, a.password, timeout=a.connect_timeout, level=a.level
    )
    payload = b"\x5a" * a.payload
    if a.case == "fanout_qos0":
        topic = "bench/fan"
    elif a.case == "latency":
        topic = f"{topic_prefix(a)}lat"
    else:
        topic = f"{topic_prefix(a)}{idx}"
    n = a.count
    blob = frames = None
    if a.case in ("fanin_qos0", "fanout_qos0"):
        blob = mr.encode_publish(topic, payload, level=a.level) * n
    elif a.case == "fanin_qos1":
        tmpl = mr.PublishTemplate(topic, payload, qos=1, level=a.level)
        frames = [tmpl.frame(i % 65535 + 1) for i in range(n)]
    ready_q.put(("ready", "pub", idx, None))
    if not go.wait(a.setup_timeout):
        raise TimeoutError("go signal never came")

    sent = 0
    acked = 0
    t_start = time.monotonic()
    if blob is not None:
        sock.settimeout(a.max_time)
        sock.sendall(blob)
        sent = n
        sh.pub_progress[idx] = sent
    elif frames is not None:
        window = max(1, a.window)
        sock.settimeout(a.idle_timeout)
        first = min(window, n)
        sock.sendall(b"".join(frames[:first]))
        sent = first
        rd = mr.PacketReader()
        try:
            while acked < n:
                data = sock.recv(65536)
                if not data:
                    res["closed_by_broker"] = True
                    break
                rd.feed(data)
                k = 0
                for ptype, _f, _b in rd.packets():
                    if ptype == mr.PUBACK:
                        k += 1
                acked += k
                sh.pub_progress[idx] = acked
                if k and sent < n:
                    m = min(k, n - sent)
                    sock.sendall(b"".join(frames[sent : sent + m]))
                    sent += m
        except TimeoutError:
            res["error"] = f"no PUBACK for {a.idle_timeout}s ({acked}/{n} acked, {sent} sent)"
        res["acked"] = acked
    else:  # latency: paced
        sock.settimeout(a.idle_timeout)
        interval = 1.0 / a.rate
        total = int(a.rate * a.duration)
        pad = payload[8:]
        head = mr.encode_publish(topic, payload, level=a.level)[: -a.payload]
        mono = time.monotonic
        ns = time.monotonic_ns
        pack = struct.pack
        behind = 0
        for i in range(total):
            target = t_start + i * interval
            d = target - mono()
            if d > 0:
                time.sleep(d)
            elif d < -0.002:
                behind += 1
            sock.sendall(head + pack("!q", ns()) + pad)
            sent += 1
            if stop.is_set():
                break
        res["late_sends_over_2ms"] = behind
        sh.pub_progress[idx] = sent
    t_end = time.monotonic()
    sh.pub_done[idx] = t_end
    res.update(sent=sent, t_start=t_start, t_end=t_end)
    # stay connected until the run is over: a DISCONNECT must not race the
    # broker's processing of what is still buffered
    stop.wait(a.max_time)
    _close(sock, not res.get("closed_by_broker"))


def iot_worker(idx, a, sh, ready_q, go, stop, res):
    """Many device connections in one process: each publishes QoS0 to its own topic at
    --client-rate msg/s, phases spread evenly so the aggregate rate is smooth."""
    first = idx * a.clients // a.workers
    last = (idx + 1) * a.clients // a.workers
    socks = []
    payload = b"\x5a" * a.payload
    heads = []
    for i in range(first, last):
        sock, _reader = mr.mqtt_connect(
            a.host,
            a.port,
            f"bd-{a.run_id}-{i}",
            a.username,
            a.password,
            timeout=a.connect_timeout,
            keepalive=60,
            level=a.level,
        )
        sock.setblocking(False)
        socks.append(sock)
        heads.append(mr.encode_publish(f"{topic_prefix(a)}d{i}", payload, level=a.level)[: -a.payload])
    res["connected"] = len(socks)
    ready_q.put(("ready", "pub", idx, None))
    if not go.wait(a.setup_timeout):
        raise TimeoutError("go signal never came")
    t0 = sh.go_time.value
    period = 1.0 / a.client_rate
    n_per = a.count  # messages per client
    # client i (global index) sends message k at t0 + (i / clients + k) * period
    sched = range(len(socks))  # in phase order
    pad = payload[8:]
    pack = struct.pack
    ns = time.monotonic_ns
    mono = time.monotonic
    sent = behind = blocked = 0
    for k in range(n_per):
        for j in sched:
            target = t0 + ((first + j) / a.clients + k) * period
            d = target - mono()
            if d > 0:
                time.sleep(d)
            elif d < -0.002:
                behind += 1
            try:
                socks[j].send(heads[j] + pack("!q", ns()) + pad)
            except BlockingIOError:
                blocked += 1  # the broker does not read this device: its message is not sent
                continue
            sent += 1
        sh.pub_progress[idx] = sent
        if stop.is_set():
            break
    t_end = mono()
    sh.pub_done[idx] = t_end
    res.update(sent=sent, t_start=t0, t_end=t_end, late_sends_over_2ms=behind, send_blocked=blocked)
    stop.wait(a.max_time)
    for sock in socks:
        sock.setblocking(True)
        _close(sock)


def conn_worker(idx, a, sh, ready_q, go, stop, res):
    """CONNECT -> CONNACK -> DISCONNECT -> wait for the broker to close, in a loop."""
    ready_q.put(("ready", "conn", idx, None))
    if not go.wait(a.setup_timeout):
        raise TimeoutError("go signal never came")
    deadline = sh.go_time.value + a.duration
    ok = errors = not_closed = 0
    last_error = None
    lat: list[float] = []
    mono = time.monotonic
    disc = mr.encode_disconnect()
    i = 0
    while True:
        t = mono()
        if t >= deadline or stop.is_set():
            break
        i += 1
        try:
            sock, reader = mr.mqtt_connect(
                a.host,
                a.port,
                f"bc-{a.run_id}-{idx}-{i}",
                a.username,
                a.password,
                timeout=a.connect_timeout,
                level=a.level,
            )
            try:
                sock.sendall(disc)
                sock.settimeout(a.close_wait)
                try:
                    while sock.recv(4096):
                        pass
                except TimeoutError:
                    not_closed += 1
                except OSError:
                    pass
            finally:
                sock.close()
            ok += 1
            lat.append(mono() - t)
        except Exception as e:  # refused, reset, timeout: count and go on
            errors += 1
            last_error = f"{type(e).__name__}: {e}"
            if errors >= 200 and ok == 0:
                break
            time.sleep(0.001)
        sh.pub_progress[idx] = ok
    sh.pub_done[idx] = mono()
    res.update(ok=ok, errors=errors, not_closed=not_closed, last_error=last_error, conn_lat_s=lat)


# --------------------------------------------------------------------------
# coordinator
# --------------------------------------------------------------------------


def percentiles(values: list[float], ps=(50, 90, 99)) -> dict:
    if not values:
        return {}
    v = sorted(values)
    out = {}
    for p in ps:
        k = max(0, min(len(v) - 1, math.ceil(p / 100.0 * len(v)) - 1))  # nearest rank
        out[f"p{p}"] = v[k]
    out["max"] = v[-1]
    out["min"] = v[0]
    return out


def run(a) -> dict:
    ctx = mp.get_context("fork")
    case = a.case
    if case in ("fanin_qos0", "fanin_qos1"):
        nsubs, npubs, nconn = 1, a.pubs, 0
    elif case == "fanout_qos0":
        nsubs, npubs, nconn = a.subs, 1, 0
    elif case == "latency":
        nsubs, npubs, nconn = 1, 1, 0
        a.count = int(a.rate * a.duration)
    elif case == "iot":
        nsubs, npubs, nconn = 1, a.workers, 0
        a.count = max(1, int(a.client_rate * a.duration))
    else:
        nsubs, npubs, nconn = 0, 0, a.concurrency
    a.expected_per_sub = a.count * (a.clients if case == "iot" else npubs)
    sh = Shared(ctx, nsubs, max(npubs, nconn))
    ready_q = ctx.Queue()
    result_q = ctx.Queue()
    go = ctx.Event()
    stop = ctx.Event()
    procs: list[mp.Process] = []
    out: dict = {
        "case": case,
        "ok": False,
        "error": None,
        "run_id": a.run_id,
        "params": {
            k: getattr(a, k)
            for k in (
                "count",
                "pubs",
                "subs",
                "window",
                "payload",
                "level",
                "concurrency",
                "duration",
                "rate",
                "idle_timeout",
            )
            if hasattr(a, k)
        },
    }
    out["params"].update(nsubs=nsubs, npubs=npubs, nconn=nconn)

    def start(fn, role, idx):
        p = ctx.Process(target=_worker_main, args=(fn, role, idx, a, sh, ready_q, result_q, go, stop), daemon=True)
        p.start()
        procs.append(p)

    def wait_ready(n: int, role: str) -> None:
        deadline = time.monotonic() + a.setup_timeout
        got = 0
        while got < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{n - got} {role} client(s) not ready after {a.setup_timeout}s")
            try:
                kind, r, idx, info = ready_q.get(timeout=min(left, 0.5))
            except queue.Empty:
                continue
            if kind == "error":
                raise RuntimeError(f"{r}[{idx}] failed during setup: {info}")
            got += 1

    broker_pids = [p for p in a.broker_pids if p]
    for p in list(broker_pids):
        broker_pids.extend(descendants(p))
    groups = {"broker": broker_pids, "redis": [a.redis_pid] if a.redis_pid else [], "gen": []}
    sampler = Sampler(groups)
    results: list[dict] = []
    t_go = t_end = None
    end_reason = None
    try:
        for i in range(nsubs):
            start(sub_worker, "sub", i)
        wait_ready(nsubs, "subscriber")
        if nconn:
            for i in range(nconn):
                start(conn_worker, "conn", i)
            wait_ready(nconn, "connect")
        else:
            for i in range(npubs):
                start(iot_worker if case == "iot" else pub_worker, "pub", i)
            wait_ready(npubs, "publisher")
        groups["gen"] = [os.getpid()] + [p.pid for p in procs]
        # let delayed ACKs of the setup packets fire: a broker without
        # TCP_NODELAY (mosquitto's default) otherwise holds the first small
        # PUBLISH behind Nagle for up to ~40 ms
        time.sleep(a.settle)
        sampler.sample()
        t_go = time.monotonic()
        sh.go_time.value = t_go
        go.set()
        last_progress = t_go
        last_total = 0
        last_pubprog = -1
        hard_deadline = t_go + a.max_time
        while True:
            time.sleep(SAMPLE_INTERVAL)
            sampler.sample()
            now = time.monotonic()
            try:  # a worker that dies mid-run
                kind, r, idx, info = ready_q.get_nowait()
                if kind == "error":
                    end_reason = f"{r}[{idx}] failed: {info}"
                    break
            except queue.Empty:
                pass
            if now > hard_deadline:
                end_reason = f"max_time {a.max_time}s exceeded"
                break
            if nconn:
                if all(sh.pub_done[i] > 0 for i in range(nconn)):
                    end_reason = "duration elapsed"
                    break
                continue
            total = sum(sh.sub_count[i] for i in range(nsubs))
            if all(sh.sub_count[i] >= a.expected_per_sub for i in range(nsubs)):
                end_reason = "all delivered"
                break
            pubs_done = all(sh.pub_done[i] > 0 for i in range(npubs))
            pubprog = sum(sh.pub_progress[i] for i in range(npubs))
            if total != last_total or pubprog != last_pubprog:
                last_progress = now
                last_total = total
                last_pubprog = pubprog
            idle = now - last_progress
            if pubs_done and idle >= a.quiet:
                bcpu = sampler.recent_cpu("broker", a.quiet)
                if bcpu is not None and bcpu < 10.0:
                    end_reason = (
                        f"incomplete: no delivery for {idle:.1f}s after the publishers finished and the broker is idle"
                    )
                    break
            if idle >= a.idle_timeout:
                end_reason = f"incomplete: no progress for {a.idle_timeout}s (idle timeout)"
                break
        t_stop = time.monotonic()
        stop.set()
        deadline = time.monotonic() + 15
        nworkers = len(procs)
        while len(results) < nworkers and time.monotonic() < deadline:
            try:
                results.append(result_q.get(timeout=0.2))
            except queue.Empty:
                if not any(p.is_alive() for p in procs) and result_q.empty():
                    break
        out["end_reason"] = end_reason
        subs = sorted((r for r in results if r["role"] == "sub"), key=lambda r: r["idx"])
        pubs = sorted((r for r in results if r["role"] == "pub"), key=lambda r: r["idx"])
        conns = sorted((r for r in results if r["role"] == "conn"), key=lambda r: r["idx"])
        errs = [f"{r['role']}[{r['idx']}]: {r['error']}" for r in results if r.get("error")]
        if len(results) < nworkers:
            errs.append(f"only {len(results)}/{nworkers} workers reported")

        if nconn:
            t_end = max((sh.pub_done[i] for i in range(nconn)), default=t_stop) or t_stop
            ok = sum(r.get("ok", 0) for r in conns)
            dur = t_end - t_go
            lat = [x for r in conns for x in r.get("conn_lat_s", [])]
            pc = percentiles(lat)
            out.update(
                sent=ok + sum(r.get("errors", 0) for r in conns),
                delivered=ok,
                expected=None,
                lost=0,
                errors=sum(r.get("errors", 0) for r in conns),
                not_closed=sum(r.get("not_closed", 0) for r in conns),
                last_error=next((r["last_error"] for r in conns if r.get("last_error")), None),
                duration_s=round(dur, 4),
                rate=round(ok / dur, 1) if dur > 0 else None,
                rate_unit="conn/s",
                connect_ms={k: round(v * 1e3, 3) for k, v in pc.items()},
            )
            if ok == 0:
                errs.append(f"no successful connection ({out['last_error']})")
        else:
            sent_per_pub = [r.get("sent", 0) for r in pubs]
            sent = sum(sent_per_pub)
            delivered = sum(r.get("count", 0) for r in subs)
            # expected deliveries per subscriber = everything that was sent
            lost = sum(max(0, sent - r.get("count", 0)) for r in subs) + max(0, nsubs - len(subs)) * sent
            extra = sum(max(0, r.get("count", 0) - sent) for r in subs)
            lasts = [r["last"] for r in subs if r.get("last")]
            t_end = max(lasts) if lasts else t_stop
            dur = t_end - t_go
            out.update(
                sent=sent,
                delivered=delivered,
                expected=sent * nsubs,
                lost=lost,
                extra=extra,
                duration_s=round(dur, 4),
                rate=round(delivered / dur, 1) if dur > 0 and delivered else 0.0,
                rate_unit="deliveries/s" if case == "fanout_qos0" else "msg/s",
            )
            pub_t = [r["t_end"] - r["t_start"] for r in pubs if "t_end" in r]
            if pub_t:
                out["publish_s"] = round(max(pub_t), 4)
            firsts = [r["first"] for r in subs if r.get("first")]
            if firsts:
                out["first_delivery_s"] = round(min(firsts) - t_go, 4)
            if case == "fanin_qos1":
                out["acked"] = sum(r.get("acked", 0) for r in pubs)
                out["dup_flag"] = sum(r.get("dup_flag", 0) for r in subs)
            if case in ("latency", "iot"):
                lat = [x / 1000.0 for r in subs for x in r.get("lat_ns", [])]
                pc = percentiles(lat, (50, 90, 99))
                out["latency_us"] = {k: round(v, 1) for k, v in pc.items()}
                out["late_sends_over_2ms"] = sum(r.get("late_sends_over_2ms", 0) for r in pubs)
                out["rate"] = round(sent / dur, 1) if dur > 0 else None
                out["rate_unit"] = "msg/s (paced)"
            if case == "iot":
                out["clients"] = sum(r.get("connected", 0) for r in pubs)
                out["send_blocked"] = sum(r.get("send_blocked", 0) for r in pubs)
            framing = {
                k: sum(r.get(k, 0) or 0 for r in subs)
                for k in ("slow_frames", "other_packets", "foreign")
                if any(k in r for r in subs)
            }
            ot: dict = {}
            for r in subs:
                for k, v in (r.get("other_types") or {}).items():
                    ot[k] = ot.get(k, 0) + v
            if ot:
                framing["other_types"] = ot
            if framing:
                out["parser"] = framing
            if delivered == 0 and sent:
                errs.append("nothing delivered")
        out["broker_cpu_pct"] = sampler.cpu_pct("broker", t_go, t_end)
        if out.get("broker_cpu_pct") is not None and out.get("delivered") and t_end and t_go:
            out["broker_us_per_msg"] = round(out["broker_cpu_pct"] / 100.0 * (t_end - t_go) * 1e6 / out["delivered"], 2)
        out["redis_cpu_pct"] = sampler.cpu_pct("redis", t_go, t_end)
        out["gen_cpu_pct"] = sampler.cpu_pct("gen", t_go, t_end)
        out["machine_busy_pct"], out["steal_pct"] = sampler.machine(t_go, t_end)
        out["broker_pids"] = broker_pids
        if end_reason and (end_reason.startswith("incomplete") or "failed" in end_reason or "max_time" in end_reason):
            if not out.get("lost"):
                errs.append(end_reason)
        if errs:
            out["error"] = "; ".join(errs)
        # a run that lost messages is still a valid measurement; it says so
        out["ok"] = not errs
    except Exception as e:
        out["error"] = f"{type(e).__name__}: {e}"
        out["ok"] = False
    finally:
        stop.set()
        go.set()  # release anyone still waiting, they will see stop
        for p in procs:
            p.join(timeout=2)
        for p in procs:
            if p.is_alive():
                p.terminate()
                p.join(timeout=2)
            if p.is_alive():
                p.kill()
                p.join(timeout=1)
    return out


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("case", choices=CASES)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--username")
    ap.add_argument("--password")
    ap.add_argument("--count", type=int, default=5000, help="messages per publisher")
    ap.add_argument("--pubs", type=int, default=4)
    ap.add_argument("--subs", type=int, default=10)
    ap.add_argument("--window", type=int, default=100, help="QoS1 un-PUBACKed messages per publisher")
    ap.add_argument("--payload", type=int, default=64)
    ap.add_argument("--level", type=int, choices=(4, 5), default=4, help="MQTT protocol level: 4 = 3.1.1, 5 = MQTT 5")
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--duration", type=float, default=3.0, help="connect_rate / latency seconds")
    ap.add_argument("--rate", type=float, default=1000.0, help="latency msg/s")
    ap.add_argument("--clients", type=int, default=1000, help="iot: connected devices")
    ap.add_argument("--client-rate", type=float, default=2.0, help="iot: msg/s per device")
    ap.add_argument("--workers", type=int, default=4, help="iot: load generator processes for the devices")
    ap.add_argument("--broker-pids", default="", help="comma separated; their children are included")
    ap.add_argument("--redis-pid", type=int, default=0)
    ap.add_argument("--idle-timeout", type=float, default=20.0, help="give up when nothing is delivered for this long")
    ap.add_argument(
        "--quiet",
        type=float,
        default=1.0,
        help="end early when publishers are done, nothing arrived for this long and the broker is idle",
    )
    ap.add_argument("--settle", type=float, default=0.25, help="pause between 'all clients ready' and 'go'")
    ap.add_argument("--connect-timeout", type=float, default=10.0)
    ap.add_argument("--setup-timeout", type=float, default=20.0)
    ap.add_argument(
        "--close-wait",
        type=float,
        default=1.0,
        help="connect_rate: how long to wait for the broker to close after DISCONNECT",
    )
    ap.add_argument("--max-time", type=float, default=120.0)
    ap.add_argument("--rcvbuf", type=int, default=0)
    ap.add_argument("--run-id", default=None)
    return ap


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    a.broker_pids = [int(x) for x in a.broker_pids.split(",") if x.strip()]
    a.run_id = a.run_id or os.urandom(3).hex()
    a.rcvbuf = a.rcvbuf or None
    res = run(a)
    sys.stdout.write(json.dumps(res) + "\n")
    sys.stdout.flush()
    return 0 if res.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
