"""Third-party amqtt plugins for engine tests, loaded by dotted path through the `plugins:` config
section (mqtt-guard) or amqtt's own config (plain amqtt)."""

from __future__ import annotations

from dataclasses import dataclass

from amqtt.contexts import Action
from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin


class AllowAllTopic(BaseTopicPlugin):
    """A no-op topic plugin: with one loaded, plain amqtt routes through its slow plugin path."""

    @dataclass
    class Config:
        pass

    async def topic_filtering(self, *, session=None, topic=None, action=None) -> bool:
        return True


class FaultyTopic(BaseTopicPlugin):
    """Raises for: RECEIVE by clients whose id starts with 'victim-', PUBLISH to 'boom/...', SUBSCRIBE
    to 'boom/#'. Allows everything else."""

    @dataclass
    class Config:
        pass

    async def topic_filtering(self, *, session=None, topic=None, action=None) -> bool:
        if action is Action.RECEIVE and session is not None and str(session.client_id).startswith("victim-"):
            raise RuntimeError("faulty plugin: receive check exploded")
        if action is Action.PUBLISH and topic and topic.startswith("boom/"):
            raise RuntimeError("faulty plugin: publish check exploded")
        if action is Action.SUBSCRIBE and topic == "boom/#":
            raise RuntimeError("faulty plugin: subscribe check exploded")
        return True


class FaultyAuth(BaseAuthPlugin):
    """Raises for username 'crash'; abstains (None) for everybody else."""

    @dataclass
    class Config:
        pass

    async def authenticate(self, *, session) -> bool | None:
        if session.username == "crash":
            raise RuntimeError("faulty plugin: auth exploded")
        return None


class DenyAuth(BaseAuthPlugin):
    """Refuses username 'denied' (returns False); abstains (None) for everybody else."""

    @dataclass
    class Config:
        pass

    async def authenticate(self, *, session) -> bool | None:
        return False if session.username == "denied" else None
