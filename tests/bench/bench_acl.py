"""Micro-benchmark of AclPolicy decisions (not collected by pytest).

Builds 1,000 rules for one user (plus a group and pattern rules), then
measures decision latency:

* cached: the same topics asked again (the per-PUBLISH/per-delivery common
  case); measured in batches of ``--batch`` calls to keep timer overhead out,
  plus raw single-call timings for comparison;
* uncached: every call uses a topic never seen before (a full trie walk plus
  validation and cache insertion);
* compile: the first decision of a new session of an already compiled user
  (only its placeholder rules are compiled), and the first decision after
  the user's rules changed (the 1,000-rule trie is rebuilt).

Usage::

    .venv/bin/python tests/bench/bench_acl.py [--out tests/bench/results/acl.json]

Target: cached decision < 5 us median.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from mqtt_guard.acl.policy import AclPolicy, Subject  # noqa: E402 - after the sys.path set-up that lets the script run on its own
from mqtt_guard.acl.rules import Perm, parse_rules  # noqa: E402 - after the sys.path set-up that lets the script run on its own

DEFAULT_OUT = ROOT / "tests" / "bench" / "results" / "acl.json"
USER = "alice"


def user_hash() -> dict[str, str]:
    """1,000 rules of the shapes seen in practice: literal prefixes, '+', denies."""
    h: dict[str, str] = {}
    for i in range(600):
        h[f"site/{i}/telemetry/#"] = "readwrite"
    for i in range(200):
        h[f"fleet/+/dev{i}/cmd"] = "publish"
    for i in range(100):
        h[f"site/{i}/telemetry/secret/#"] = "deny-receive"
    for i in range(100):
        h[f"tenant/{i}/+/state"] = "read,deny-publish"
    assert len(h) == 1000
    return h


def build_policy() -> tuple[AclPolicy, Subject]:
    p = AclPolicy(decision_cache_size=1_000_000)
    for key, mapping in (
        (f"user:{USER}", user_hash()),
        ("group:ops", {"ops/#": "read", "ops/admin/#": "deny"}),
        ("pattern", {"home/%u/#": "readwrite", "clients/%c/status": "publish"}),
    ):
        rules, problems = parse_rules(key, mapping)
        assert not problems, problems
        p.set_rules(key, rules)
    return p, Subject(USER, "bench-client", frozenset({"ops"}))


def workload(start: int, n: int) -> list[tuple[Perm, str]]:
    """A mix of publish/receive/subscribe questions, allowed and denied.

    Every question embeds its index, so two ranges never share a topic:
    the uncached run really never hits the cache.
    """
    out: list[tuple[Perm, str]] = []
    for i in range(start, start + n):
        k = i % 8
        if k == 0:
            out.append((Perm.PUBLISH, f"site/{i % 600}/telemetry/temp/{i}"))
        elif k == 1:
            out.append((Perm.RECEIVE, f"site/{i % 100}/telemetry/secret/{i}"))
        elif k == 2:
            out.append((Perm.PUBLISH, f"fleet/truck{i}/dev{i % 200}/cmd"))
        elif k == 3:
            out.append((Perm.RECEIVE, f"tenant/{i % 100}/room{i}/state"))
        elif k == 4:
            out.append((Perm.PUBLISH, f"tenant/{i % 100}/room{i}/state"))
        elif k == 5:
            out.append((Perm.SUBSCRIBE, f"site/{i % 600}/telemetry/{i}/+"))
        elif k == 6:
            out.append((Perm.RECEIVE, f"home/{USER}/room{i}/light"))
        else:
            out.append((Perm.PUBLISH, f"unknown/{i}/x"))
    return out


def pct(samples: list[float], q: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(q * len(s)))]


def summarise(samples_ns: list[float]) -> dict[str, float]:
    us = [x / 1000 for x in samples_ns]
    return {
        "n": len(us),
        "median_us": round(statistics.median(us), 4),
        "p99_us": round(pct(us, 0.99), 4),
        "mean_us": round(statistics.fmean(us), 4),
        "max_us": round(max(us), 4),
    }


def timer_overhead_ns(n: int = 20000) -> float:
    clock = time.perf_counter_ns
    samples = []
    for _ in range(n):
        t0 = clock()
        samples.append(clock() - t0)
    return statistics.median(samples)


def bench_cached(p: AclPolicy, s: Subject, qs: list[tuple[Perm, str]], rounds: int, batch: int) -> dict[str, object]:
    for action, topic in qs:  # warm up: every question is now cached
        p.allowed(s, action, topic)
    allowed, decide, clock = p.allowed, p.decide, time.perf_counter_ns
    batched_allowed: list[float] = []
    batched_decide: list[float] = []
    single: list[float] = []
    nb = len(qs) // batch
    for r in range(rounds):
        for b in range(nb):
            chunk = qs[b * batch : (b + 1) * batch]
            t0 = clock()
            for action, topic in chunk:
                allowed(s, action, topic)
            batched_allowed.append((clock() - t0) / batch)
            t0 = clock()
            for action, topic in chunk:
                decide(s, action, topic)
            batched_decide.append((clock() - t0) / batch)
        if r == 0:
            for action, topic in qs:
                t0 = clock()
                allowed(s, action, topic)
                single.append(clock() - t0)
    return {
        "allowed_batched": summarise(batched_allowed),
        "decide_batched": summarise(batched_decide),
        "allowed_single_call_raw": summarise(single),
    }


def bench_uncached(p: AclPolicy, s: Subject, qs: list[tuple[Perm, str]]) -> dict[str, object]:
    allowed, clock = p.allowed, time.perf_counter_ns
    samples: list[float] = []
    for action, topic in qs:
        t0 = clock()
        allowed(s, action, topic)
        samples.append(clock() - t0)
    return {"allowed_single_call_raw": summarise(samples)}


def bench_compile(p: AclPolicy, n: int) -> dict[str, object]:
    """First decision of a new session, with and without the user compiled."""
    clock = time.perf_counter_ns
    new_session: list[float] = []
    full: list[float] = []
    rules = p.rules_for(f"user:{USER}")
    for i in range(n):
        s = Subject(USER, f"fresh-{i}", frozenset({"ops"}))
        t0 = clock()
        p.allowed(s, Perm.PUBLISH, "site/1/telemetry/x")
        new_session.append(clock() - t0)
    for i in range(n):
        p.set_rules(f"user:{USER}", rules)  # invalidates the shared base
        s = Subject(USER, f"again-{i}", frozenset({"ops"}))
        t0 = clock()
        p.allowed(s, Perm.PUBLISH, "site/1/telemetry/x")
        full.append(clock() - t0)
    return {"first_decision_new_session": summarise(new_session), "first_decision_after_rule_change": summarise(full)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON result path (default: %(default)s)")
    ap.add_argument("--questions", type=int, default=2000, help="distinct cached questions")
    ap.add_argument("--rounds", type=int, default=20, help="passes over the cached questions")
    ap.add_argument("--batch", type=int, default=100, help="calls per cached timing sample")
    ap.add_argument("--uncached", type=int, default=20000, help="fresh-topic decisions")
    args = ap.parse_args(argv)

    p, s = build_policy()
    gc.collect()
    gc.disable()  # keep collector pauses out of the latency samples
    try:
        overhead = timer_overhead_ns()
        cached = bench_cached(p, s, workload(0, args.questions), args.rounds, args.batch)
        before = p.stats()["decisions"]
        uncached = bench_uncached(p, s, workload(args.questions, args.uncached))
        assert p.stats()["decisions"] - before == args.uncached, "uncached run hit the cache"
        compiled = bench_compile(p, 30)
    finally:
        gc.enable()

    result = {
        "benchmark": "acl_decision",
        "rules_for_user": 1000,
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "machine": platform.machine(),
        "timer_overhead_ns_median": overhead,
        "cached": cached,
        "uncached": uncached,
        "compile": compiled,
        "target_cached_median_us": 5.0,
    }
    result["cached_target_met"] = cached["allowed_batched"]["median_us"] < 5.0  # type: ignore[index]  # the result dict is untyped JSON
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")

    def line(name: str, d: dict[str, float]) -> None:
        print(f"{name:38s} median {d['median_us']:8.3f} us   p99 {d['p99_us']:8.3f} us   (n={d['n']})")

    print(f"ACL decision benchmark, 1000 user rules, Python {result['python']}")
    line("cached allowed() [batched]", cached["allowed_batched"])  # type: ignore[arg-type]  # the result dict is untyped JSON
    line("cached decide()  [batched]", cached["decide_batched"])  # type: ignore[arg-type]  # the result dict is untyped JSON
    line("cached allowed() [single, raw]", cached["allowed_single_call_raw"])  # type: ignore[arg-type]  # the result dict is untyped JSON
    line("uncached allowed() [single, raw]", uncached["allowed_single_call_raw"])  # type: ignore[arg-type]  # the result dict is untyped JSON
    line("1st decision, new session", compiled["first_decision_new_session"])  # type: ignore[arg-type]  # the result dict is untyped JSON
    line("1st decision, after rule change", compiled["first_decision_after_rule_change"])  # type: ignore[arg-type]  # the result dict is untyped JSON
    print(f"timer overhead per single-call sample: {overhead:.0f} ns")
    print(f"target cached median < 5 us: {'met' if result['cached_target_met'] else 'MISSED'}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
