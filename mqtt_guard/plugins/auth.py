"""amqtt auth plugin: glue from amqtt's `authenticate(session)` to the Guard's Authenticator."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from amqtt.plugins.base import BaseAuthPlugin
from amqtt.session import Session

from ..auth.tls import certificate_identity
from ..engine.session_info import AUTH_RESULT, CLIENT, LISTENER, listener_of
from ..guard import guard_of
from ..metrics import counters as C
from ..quota.enforcer import QuotaRefusal

log = logging.getLogger("mqtt_guard.auth")


class GuardAuthPlugin(BaseAuthPlugin):
    @dataclass
    class Config:
        pass

    async def authenticate(self, *, session: Session) -> bool | None:
        listener = listener_of(session)
        by_identity = bool(listener and listener.use_identity_as_username)
        guard = guard_of(self.context)
        result = await guard.authenticate(
            username=session.username,
            password=session.password,
            cert_identity=certificate_identity(session.ssl_object) if by_identity else None,
            identity_as_username=by_identity,
            listener=listener,
        )
        session.attributes[AUTH_RESULT] = result
        if not result.ok:
            guard.counters.auth_failed(
                session.client_id, result.username, result.outcome, known_user=result.user is not None
            )
        if by_identity and result.username:
            session.username = result.username
        if result.ok and session.client_id:
            # Load the client's ACL rules now, so its first PUBLISH after CONNACK is decided correctly.
            try:
                session.attributes[CLIENT] = await guard.attach(
                    session.client_id, result, "identity" if by_identity else "", listener_config=listener
                )
            except QuotaRefusal as refusal:  # blocked, or too many sessions: CONNACK 5 with the reason
                guard.counters.auth_failed(
                    session.client_id,
                    result.username,
                    C.quota_refusal(str(refusal)),
                    known_user=result.user is not None,
                )
                log.warning(
                    "refused CONNECT of client %r, username %r: %s (CONNACK 5)",
                    session.client_id,
                    result.username,
                    refusal,
                )
                session.attributes.pop(AUTH_RESULT, None)
                return False
        return result.ok


__all__ = ["GuardAuthPlugin", "LISTENER"]
