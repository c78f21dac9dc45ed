"""A token's plan claim (`AuthResult.plan` -> `GuardClient.plan`) in the precedence, in an in-process
Guard on the test Redis: after the user's own plan, before its groups' plans (#19 item 3)."""

from __future__ import annotations

import asyncio

from mqtt_guard.auth.authenticator import AuthResult, Outcome
from mqtt_guard.store.users import UserRecord
from tests.quota.helpers import eventually, guards, make_config


def test_the_token_plan_claim_sits_between_the_users_plan_and_its_groups(redis_server, prefix, rds):
    config = make_config(redis_server.url, prefix)
    rds.hset(f"{prefix}quota:plan:gold", mapping={"events": "1000/1d", "rate": "50/s"})
    rds.hset(f"{prefix}quota:plan:silver", mapping={"events": "100/1d", "sessions": "4"})
    rds.hset(f"{prefix}quota:plan:bronze", mapping={"events": "10/1d"})
    rds.sadd(f"{prefix}user:u:groups", "partners")
    rds.hset(f"{prefix}quota:group:partners", "plan", "silver")
    rds.hset(f"{prefix}quota:default", "events", "1/1d")

    async def body():
        async with guards(config) as [g]:
            await eventually(lambda: g.quota.blocks.loaded and g.listener.connected.is_set())
            c = await g.attach(
                "a", AuthResult(Outcome.OK, "u", UserRecord("u", groups=frozenset({"partners"})), plan="gold")
            )
            assert c.plan == "gold"
            limits = g.quota.users["u"].limits
            assert str(limits.events) == "1000/1d" and limits.sessions == 4  # token plan, then the group's
            g.detach(c)
            rds.hset(f"{prefix}quota:user:u", "plan", "bronze")  # the user's own plan beats the token's
            await asyncio.sleep(0.2)
            c = await g.attach(
                "b", AuthResult(Outcome.OK, "u", UserRecord("u", groups=frozenset({"partners"})), plan="gold")
            )
            assert await eventually(lambda: str(g.quota.users["u"].limits.events) == "10/1d")
            assert g.quota.users["u"].limits.rate is not None  # still gold's rate (bronze sets none)
            g.detach(c)

    asyncio.run(body())
