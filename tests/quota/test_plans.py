"""Plans: the precedence of issue 19 item 3, per field, as a pure function (quota/plans.py)."""

from __future__ import annotations

from mqtt_guard.quota.limits import parse_windows, resolve
from mqtt_guard.quota.plans import Sources, effective, generosity, layers, most_generous


def src(user=None, default=None, plans=None, groups=None) -> Sources:
    return Sources(user or {}, default or {}, plans or {}, groups or {})


PLANS = {
    "gold": {"events": "1000/1d", "rate": "50/s", "session_time": "8h"},
    "bronze": {"events": "10/1d", "rate": "1/s", "sessions": "1"},
    "silver": {"events": "100/1d", "sessions": "3", "max_queue": "10"},
    "token": {"events": "500/1d", "max_queue": "99", "on_exceed": "disconnect"},
}


def test_each_field_comes_from_the_first_layer_that_sets_it():
    s = src(
        user={"plan": "gold", "rate": "2/s"},
        default={"events": "1/1d", "max_queue": "1", "queue_grace": "5s"},
        plans=PLANS,
        groups={"a": "bronze", "b": "silver"},
    )
    limits = effective(s, token_plan="token")
    assert str(limits.rate and limits.rate.per_second) == "2.0"  # 1. the user's own field
    assert str(limits.events) == "1000/1d" and limits.session_time == 8 * 3600  # 2. the user's plan
    assert limits.max_queue == 99 and limits.on_exceed == "disconnect"  # 3. the token's plan claim
    assert limits.sessions == 3  # 4. the most generous group plan (silver 3 > bronze 1)
    assert limits.queue_grace == 5  # 5. the default
    _, sources, _ = resolve(layers(s, "token")[0])
    assert sources == {
        "rate": "user",
        "events": "plan gold",
        "session_time": "plan gold",
        "max_queue": "plan token",
        "on_exceed": "plan token",
        "sessions": "plan silver",
        "queue_grace": "default",
    }


def test_token_plan_comes_after_the_users_plan_and_before_groups():
    s = src(plans=PLANS, groups={"a": "gold"})
    assert str(effective(s, token_plan="token").events) == "500/1d"  # token over the group plan
    s = src(user={"plan": "bronze"}, plans=PLANS)
    assert str(effective(s, token_plan="token").events) == "10/1d"  # user's plan over the token


def test_none_in_a_higher_layer_removes_a_lower_limit():
    s = src(user={"events": "none"}, default={"events": "5/1m"}, plans=PLANS, groups={"a": "bronze"})
    assert effective(s).events is None
    s = src(default={"events": "5/1m"}, plans={"free": {"events": "none"}}, groups={"a": "free", "b": "bronze"})
    assert effective(s).events is None  # `none` is the most generous of all


def test_the_most_generous_group_plan_wins_per_field():
    s = src(plans=PLANS, groups={"x": "bronze", "y": "silver", "z": "gold"})
    limits = effective(s)
    assert str(limits.events) == "1000/1d"  # gold
    assert limits.sessions == 3  # silver (gold does not set it)
    assert limits.rate is not None and limits.rate.per_second == 50
    assert limits.max_queue == 10


def test_generosity_compares_the_window_that_binds_in_the_long_run():
    tight = parse_windows("100/1m,1000/1d")  # 1000/day binds
    loose = parse_windows("10/1m,5000/1d")  # 5000/day
    assert generosity(loose) > generosity(tight)
    chosen = most_generous([("plan a", {"events": "100/1m,1000/1d"}), ("plan b", {"events": "10/1m,5000/1d"})])
    assert chosen == [("plan b", {"events": "10/1m,5000/1d"})]


def test_a_plan_that_does_not_exist_is_reported_and_sets_nothing():
    s = src(user={"plan": "platinum"}, default={"events": "5/1m"}, groups={"g": "ghost"})
    limits = effective(s, token_plan="nope")
    assert str(limits.events) == "5/1m"
    assert any("plan 'platinum' does not exist" in p for p in limits.problems)
    assert any("token plan 'nope' does not exist" in p for p in limits.problems)
    assert any("plan of group 'g'" in p for p in limits.problems)


def test_a_malformed_plan_value_falls_through_to_the_next_layer():
    s = src(user={"plan": "bad"}, default={"events": "5/1m"}, plans={"bad": {"events": "100/1fortnight"}})
    limits = effective(s)
    assert str(limits.events) == "5/1m" and any("plan bad events" in p for p in limits.problems)
