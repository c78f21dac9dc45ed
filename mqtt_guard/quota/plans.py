"""Plans: named quota templates, and which value of a field applies to a user (pure).

A plan is a hash of the same fields as a user's quota hash (`quota:plan:<name>`, quota/limits.py).
A user gets plans three ways: its own `plan` field (`mqtt-guard user set NAME --plan P`, kept in its
`quota:user:<u>` hash), a token's trusted `plan` claim (auth/, passed on as `GuardClient.plan`), and
the plans of its groups (`quota:group:<g>` field `plan`, `mqtt-guard group set G --plan P`).

Precedence, per field: the first of these that sets it wins:

1. the user's own fields (`quota set USER ...`);
2. the user's plan;
3. the token's plan claim;
4. the most generous value among the plans of the user's groups (`generosity`);
5. `quota:default`.

`none` counts as setting a field (no limit). A plan named somewhere that does not exist sets nothing
(and is reported as a problem, like a malformed value).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from .limits import Allowance, Layer, Limits, Rate, build, parser, resolve

PLAN_FIELD = "plan"  # in a user's quota hash and in a group's hash: the name of its plan
NAME_CHARS = "A-Za-z0-9_.-"


@dataclass(frozen=True, slots=True)
class Sources:
    """What Redis holds for one user, as `store/quota.py` reads it in one round trip."""

    user: dict[str, str]  # quota:user:<u> (limits and `plan`)
    default: dict[str, str]
    plans: dict[str, dict[str, str]]  # every plan named by the user, its token or its groups (empty: missing)
    group_plans: dict[str, str]  # group -> plan name


def generosity(value: object) -> float | tuple[float, float]:
    """Larger is more generous: how a group plan's value of a field is compared with another's."""
    if value is None:
        return math.inf  # `none`: no limit
    if isinstance(value, tuple) and value and isinstance(value[0], Allowance):
        # several windows: the one that binds in the long run (the smallest allowance per second)
        return float(min(a.limit / a.window.seconds for a in value))
    if isinstance(value, Rate):
        return (value.per_second, value.burst)
    if value == "drop":
        return 1.0
    if value == "disconnect":
        return 0.0
    if value in ("in", "out"):
        return 1.0  # counts fewer messages than both
    if value == "both":
        return 0.0
    if isinstance(value, int | float):
        return float(value)
    return 0.0


def most_generous(plans: Sequence[Layer]) -> list[Layer]:
    """One layer per field: the value of the plan that is most generous for it (the first on a tie)."""
    best: dict[str, tuple[float | tuple[float, float], str, str]] = {}
    for source, raw in plans:
        for name, text in (raw or {}).items():
            parse = parser(name)
            if parse is None:
                continue
            values, _, problems = resolve([(source, {name: text})])
            if problems or name not in values:
                continue
            key = generosity(values[name])
            if name not in best or _gt(key, best[name][0]):
                best[name] = (key, source, text)
    return [(source, {name: text}) for name, (_, source, text) in best.items()]


def _gt(a: float | tuple[float, float], b: float | tuple[float, float]) -> bool:
    ta = a if isinstance(a, tuple) else (a, 0.0)
    tb = b if isinstance(b, tuple) else (b, 0.0)
    return ta > tb


def layers(src: Sources, token_plan: str | None = None) -> tuple[list[Layer], list[str]]:
    """The precedence as layers for `limits.resolve`, and the plans named but missing."""
    missing: list[str] = []

    def plan(name: str | None, label: str) -> Layer | None:
        if not name:
            return None
        raw = src.plans.get(name)
        if not raw:
            missing.append(f"{label} {name!r} does not exist")
            return None
        return (f"plan {name}", raw)

    user_plan = src.user.get(PLAN_FIELD, "").strip() or None
    out: list[Layer] = [("user", {k: v for k, v in src.user.items() if k != PLAN_FIELD})]
    for layer in (plan(user_plan, "plan"), plan(token_plan, "token plan")):
        if layer is not None:
            out.append(layer)
    groups: list[Layer] = []
    for group in sorted(src.group_plans):
        layer = plan(src.group_plans[group], f"plan of group {group!r}")
        if layer is not None:
            groups.append(layer)
    out += most_generous(groups)
    out.append(("default", src.default))
    return out, missing


def effective(src: Sources, token_plan: str | None = None) -> Limits:
    """The limits that apply to the user (with a token's plan claim, if any)."""
    lay, missing = layers(src, token_plan)
    values, _, problems = resolve(lay)
    return build(values, [*missing, *problems])
