"""How the sidecar finds work besides deadlines: changed keys and the sliced sweep (pure: no Redis)."""

from __future__ import annotations

from mqtt_guard.sidecar.work import URGENT_SLICE, Sweep, Work
from mqtt_guard.store.keys import Keys


def test_changed_keys_name_the_sessions_to_evaluate():
    keys = Keys("p:")
    work = Work(keys)
    assert all(p.startswith("p:") for p in work.prefixes())
    work.changed(
        [
            keys.quota_user("alice"),
            keys.user("bob"),
            keys.user_groups("carol"),  # its groups (their plans apply to it)
            keys.block_user("dave"),
            keys.block_client("dev:1"),
            keys.quota_reset("erin"),
            "p:acl:user:x",
        ]
    )
    assert not work.sweep_now
    users, clients = work.take()
    assert users == {"alice", "bob", "carol", "dave", "erin"} and clients == {"dev:1"}
    assert work.take() == (set(), set())
    assert keys.quota_plan("") in work.prefixes() and keys.quota_group("") in work.prefixes()
    work.changed([keys.quota_default()])
    assert work.default_changed and not work.sweep_now  # (re-timed in Redis, not swept)
    work.missed()
    assert work.sweep_now


def test_a_changed_plan_or_group_plan_sweeps_every_session():
    """Any session may be on a plan (its user's, its groups', its token's claim): all are evaluated."""
    keys = Keys("p:")
    for name in (keys.quota_plan("gold"), keys.quota_group("partners")):
        work = Work(keys)
        work.changed([name])
        assert work.sweep_now and work.take() == (set(), set())


def test_named_sessions_are_evaluated_a_slice_a_tick_oldest_first():
    work = Work(Keys("p:"))
    work.name([f"a{i}" for i in range(URGENT_SLICE + 10)])
    work.name(["a0", "b"])  # (already named: keeps its place)
    first = work.take_named()
    assert len(first) == URGENT_SLICE and first[0] == "a0"
    assert work.take_named() == [f"a{i}" for i in range(URGENT_SLICE, URGENT_SLICE + 10)] + ["b"]
    assert work.take_named() == []
    work.name(["c"])
    work.default_changed = True
    work.drop()
    assert work.take_named() == [] and not work.default_changed


def test_the_sweep_spreads_every_session_over_its_interval():
    sweep = Sweep(interval=100, tick=1)
    assert sweep.idle(0)
    ids = [f"c{i}" for i in range(1000)]
    sweep.start(ids, 0, urgent=False)
    seen: list[str] = []
    ticks = 0
    while not sweep.idle(ticks):
        seen += sweep.take()
        ticks += 1
    assert sorted(seen) == sorted(ids) and len(seen) == len(set(seen))
    assert ticks == 100  # done within 90 ticks, the next one starts 100 s after the last began
    sweep.start(ids, 100, urgent=True)
    assert len(sweep.take()) == 1000 and sweep.take() == []


def test_an_urgent_sweep_keeps_each_tick_short():
    """A new leader's sweep of a large fleet comes in slices of URGENT_SLICE, each session once."""
    sweep = Sweep(interval=600, tick=1)
    ids = [f"c{i}" for i in range(2 * URGENT_SLICE + 5)]
    sweep.start(ids, 0, urgent=True)
    parts = [sweep.take() for _ in range(4)]
    assert [len(p) for p in parts] == [URGENT_SLICE, URGENT_SLICE, 5, 0]
    assert sorted(sum(parts, [])) == sorted(ids)
