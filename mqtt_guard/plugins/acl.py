"""amqtt topic plugin: glue from `topic_filtering(session, topic, action)` to the Guard's ACL.

`check()` is the same decision as a plain synchronous call; GuardedBroker uses it on the hot path so a
decision costs a dict lookup instead of an asyncio Task (amqtt awaits plugins through gather()).
"""

from __future__ import annotations

from dataclasses import dataclass

from amqtt.contexts import Action
from amqtt.plugins.base import BaseTopicPlugin
from amqtt.session import Session

from ..acl.rules import Perm
from ..engine.session_info import CLIENT
from ..guard import guard_of

_ACTIONS = {Action.PUBLISH: Perm.PUBLISH, Action.SUBSCRIBE: Perm.SUBSCRIBE, Action.RECEIVE: Perm.RECEIVE}


class GuardAclPlugin(BaseTopicPlugin):
    @dataclass
    class Config:
        pass

    def __init__(self, context) -> None:
        super().__init__(context)
        self.guard = guard_of(context)

    def check(self, session: Session | None, topic: str | None, action: Action | None) -> bool:
        if session is None or topic is None or action is None:
            return False
        client = session.attributes.get(CLIENT)
        if client is None:  # not admitted through the guard: nothing is allowed
            return False
        return self.guard.may(client, _ACTIONS[action], topic)

    async def topic_filtering(
        self, *, session: Session | None = None, topic: str | None = None, action: Action | None = None
    ) -> bool:
        return self.check(session, topic, action)
