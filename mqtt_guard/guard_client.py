"""What the guard knows about one connected client, kept on its amqtt Session."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from .acl.policy import Subject
from .auth.access_token import AccessToken


@dataclass(slots=True)
class GuardClient:
    client_id: str
    username: str | None  # None: anonymous
    subject: Subject  # replaced when the user's groups or superuser flag change in Redis
    listener: str = ""
    had_record: bool = True  # False for a certificate identity with no user hash in Redis
    listener_config: Any = None  # our ListenerConfig it came in on (file-backed sources are per listener)
    address: str | None = None  # source address (canonical): `mqtt-guard ban --kick` disconnects by it
    # The access token it authenticated with (docs/tokens.md): its jti (revocation), expiry and the trusted
    # plan claim, which the plans (quota/) read as `client.token.plan`.
    token: AccessToken | None = None
    expiry: asyncio.TimerHandle | None = None  # disconnects it when the token expires (Guard.attach)
    # The plan named by the client's token (a trusted `plan` claim, auth/): quota/plans.py's precedence
    # puts it after the user's own fields and plan, before its groups' plans (issue 19).
    plan: str | None = None
