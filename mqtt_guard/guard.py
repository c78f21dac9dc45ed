"""The in-process guard: one object per broker process that owns the Redis connection and the state
the engine decides from (users, ACL rules, quotas, counters), and builds the services that keep it.

Data flows one way: Redis -> store -> in-process state -> decisions. The engine asks through
`ports.GuardPort`; the $SYS plugin reaches the Guard through the broker it runs in
(plugins/sys.py). Nothing else opens Redis connections, so one broker has one connection pool and one
invalidation listener.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from .acl.live import LiveAcl
from .acl.policy import AclPolicy, Subject
from .acl.rules import Perm
from .auth.access_token import EXPIRED, MISMATCH, AccessToken, TokenError, TokenVerifier, looks_like_jwt
from .auth.authenticator import Authenticator, AuthResult, Outcome
from .auth.gate import LoginGate
from .auth.jwks import JwksKeys, KeysError, StaticKeys, key_source
from .auth.throttle import KIND_MANUAL, Ban, ban_matcher, canonical_address
from .cluster import Cluster, OnRemote
from .cluster.node import ClusterNode
from .config import ConfigError, GuardConfig
from .durable.retained import RetainedSet
from .durable.session_journal import SessionJournal
from .guard_client import GuardClient
from .logutil import RateLimitedLog
from .metrics import counters as C
from .metrics.counters import Counters
from .metrics.health import BrokerReadiness, start_health_endpoint
from .metrics.service import MetricsService
from .ports import Engine
from .quota.enforcer import QuotaEnforcer
from .quota.stretch import bound as stretch_bound
from .quota.stretch import open_stretch, settle_stretch
from .reasons import BLOCKED, KICKED, TOKEN_EXPIRED, TOKEN_REVOKED, USER_REVOKED
from .store.acl import AclStore
from .store.bans import BanStore
from .store.batch import BatchWriter
from .store.connection import REDIS_ERRORS, make_async_client, redact
from .store.generation import GenerationWatch, Trust, gate
from .store.invalidation import InvalidationListener
from .store.keys import Keys
from .store.revocations import RevocationStore
from .store.sessions import SessionStore
from .store.users import UserRecord, UserStore
from .tasks import Coalescer, cancel_and_wait

log = logging.getLogger("mqtt_guard")
STARTUP_TRACKING_WAIT = 2.0  # s a start waits for the invalidation listener before it loads retained messages
acl_log = RateLimitedLog(logging.getLogger("mqtt_guard.acl"))

# Refusals that count towards login throttling: the ones a password guesser earns (each cost a hash), and
# forged or malformed access tokens (each cost a signature check).
_GUESSES = frozenset((Outcome.BAD_PASSWORD, Outcome.UNKNOWN_USER, Outcome.NO_PASSWORD, Outcome.BAD_TOKEN))


class AuthBackend(Protocol):
    """A file-backed source of CONNECT verdicts asked before Redis (compat.security.MosquittoSecurity)."""

    async def authenticate(
        self,
        *,
        username: str | None,
        password: str | None,
        listener: Any,
        identity_as_username: bool,
        fallback: Callable[[], Awaitable[AuthResult]],
    ) -> AuthResult | None:
        """The verdict, or None: not this backend's user (the next one, then Redis, decides)."""
        ...

    async def reload(self) -> None:
        """SIGHUP: re-read its files; never raises."""
        ...


class AclSource(Protocol):
    """A file-backed ACL next to the Redis rules (compat.security.MosquittoSecurity): `Guard.may`."""

    def check(self, client: GuardClient, action: Perm, topic: str) -> bool | None:
        """True: granted; False or None: not granted by this source."""
        ...

    async def reload(self) -> None:
        """SIGHUP: re-read its files; never raises."""
        ...


class Guard:
    """The composition root of a broker process: builds each service with the collaborators it uses (a
    config section, the Redis client, the key schema, the counters, a Protocol such as `QueueDepths`)
    and wires them together; the services never reach back into the Guard."""

    def __init__(self, config: GuardConfig) -> None:
        self.config = config
        self.keys = Keys(config.redis.prefix)
        self.redis = make_async_client(config.redis.url)
        # Every command of `self.redis` fails as a Redis outage while Redis is not trusted to hold this
        # deployment's data (store/generation.py): the Redis-down paths of each service apply.
        self.trust = Trust()
        gate(self.redis, self.trust)
        self.marker = GenerationWatch(
            make_async_client(config.redis.url, pool_size=2),
            self.keys,
            self.trust,
            by=f"broker {socket.gethostname()}:{os.getpid()}",
            on_trusted=self._reload_all,
        )
        # Durable state (issue 17, docs/durability.md): one writer per process for every durable write
        # (retained messages, persistent sessions), on a client that reads bytes (payloads are binary),
        # gated like `self.redis`. None both when `durable.enabled` is false (memory only).
        self.durable_redis: Any = None
        self.durable_writer: BatchWriter | None = None
        if config.durable.enabled:
            self.durable_redis = make_async_client(config.redis.url, decode_responses=False)
            gate(self.durable_redis, self.trust)
            self.durable_writer = BatchWriter(
                self.durable_redis, buffer_limit=config.durable.buffer_limit, on_lost=self._durable_lost
            )
        # The retained messages the engine serves: a local copy kept fresh from Redis (durable/retained.py)
        self.retained = RetainedSet(redis=self.durable_redis, keys=self.keys, writer=self.durable_writer)
        self._retained_catchup: asyncio.Task[None] | None = None
        self.cluster: ClusterNode | None = None  # `start_cluster`, when `cluster.enabled`
        self.users = UserStore(self.redis, self.keys)
        self.authenticator = Authenticator(self.users, config.auth)
        self.acl = LiveAcl(
            AclStore(self.redis, self.keys), self.keys, AclPolicy(default_allow=config.acl.default == "allow")
        )
        # Access tokens (docs/tokens.md): verified in process; revocations through Redis.
        self.token_keys: StaticKeys | JwksKeys | None = None
        self._revocation_check: asyncio.Task[None] | None = None  # (a reference keeps the task alive)
        self._revocation_confirms: set[asyncio.Task[None]] = set()  # (references keep the tasks alive)
        jwt = config.auth.jwt
        if jwt is not None:
            try:
                self.token_keys = key_source(jwt)
            except (OSError, ValueError, KeysError) as exc:
                raise ConfigError(f"auth.jwt: cannot load the verification key: {exc}") from None
            self.authenticator.tokens = TokenVerifier(jwt, self.token_keys)
            self.authenticator.revocations = RevocationStore(self.redis, self.keys)
        self.listener = InvalidationListener(
            config.redis.url,
            [
                *([self.keys.revoked_head()] if jwt is not None else []),
                self.keys.acl(""),
                self.keys.user(""),
                self.keys.quota_user(""),
                self.keys.quota_default(),
                self.keys.quota_reset(""),
                self.keys.quota_plan(""),
                self.keys.quota_group(""),
                self.keys.quota_apis(),
                self.keys.blocks_head(),
                self.keys.brokers(),
                self.keys.generation(),
                self.keys.schema(),
                self.keys.bans_head(),
                *([self.keys.retained_head()] if config.durable.enabled else []),
            ],
            self._on_keys,
            self._on_reset,
        )
        self.authenticator.tracking = self.listener  # user records are kept while it is connected
        # Login throttling and bans (auth/gate.py): asked before any hash work, told of every failure.
        self.gate = LoginGate(
            config.auth.throttle,
            BanStore(self.redis, self.keys),
            self.keys,
            by=f"broker {socket.gethostname()}:{os.getpid()}",
            tracked=self.listener.connected,
        )
        if config.auth.throttle.enabled:
            self.authenticator.suspicion = self.gate
        self.gate.on_kick = self._kick_banned
        self.clients: dict[str, GuardClient] = {}
        self._by_user: dict[str, set[str]] = {}
        self.engine: Engine | None = None  # set by the broker through bind_engine: kicks and queue depths
        self.counters = Counters(max_failed=config.metrics.max_failed_addresses)
        # Quotas, session registry, kicks through Redis (docs/quotas.md).
        self.quota = QuotaEnforcer(
            config.quota,
            redis=self.redis,
            redis_url=config.redis.url,
            keys=self.keys,
            counters=self.counters,
            kick=self.kick,
            drop_session=self.drop_session,
            forget_session=self.forget_session,
            queue_depth=self.queue_depth,
            tracking=self.listener,
            kick_retry=config.sidecar.kick_retry,
            trust=self.trust,
            owned_ids=config.auth.client_id_policy != "any",
        )
        # Flushes the counters to Redis (docs/analytics.md); the Guard is its queue-depth view.
        self.metrics = MetricsService(
            config.metrics, self.redis, self.keys, self.counters, queues=self, listeners=config.listeners
        )
        # Persistent sessions in Redis (issue 17 item 2, durable/session_journal.py): owned by this broker's
        # stable id (metrics.broker_id, the same after a restart) and reached through its process id
        self.session_journal: SessionJournal | None = None
        if self.durable_writer is not None:
            limits = config.limits
            self.session_journal = SessionJournal(
                SessionStore(self.durable_redis, self.keys),
                self.durable_writer,
                broker=_session_owner(self.metrics.broker_id),
                proc=self.quota.broker_id,
                queue_qos0=config.durable.queue_qos0_messages,
                max_messages=limits.max_queued_messages + limits.max_inflight_messages
                if limits.max_queued_messages
                else 0,
                max_bytes=0,
            )
        self.metrics_endpoint: asyncio.AbstractServer | None = None  # /metrics and /healthz, when configured
        self.health_endpoint: asyncio.AbstractServer | None = None  # the probes alone (metrics.health_bind)
        # What /readyz answers; the runner marks the listeners open and the drain (metrics/health.py).
        self.readiness = BrokerReadiness(
            lambda: self.metrics.redis_up, serves_without_redis=config.auth.on_redis_down == "cached"
        )
        self._user_refresh: Coalescer[str] = Coalescer(self._refresh_users, "mqtt-guard-user-refresh")
        # File-backed sources next to Redis (mosquitto password_file/acl_file, mqtt_guard/compat): an auth
        # backend answers a CONNECT before Redis (None = not its user); ACL sources are combined in may().
        self.auth_backends: list[AuthBackend] = []
        self.acl_sources: list[AclSource] = []
        self.message_size_limit = 0  # mosquitto's message_size_limit (set by compat): larger PUBLISHes dropped
        # Bumped when a file-backed ACL source reloads; with `acl.policy.version` it tells the engine
        # when decisions it cached (per topic) may have changed.
        self.acl_epoch = 0

    async def start(self) -> None:
        """Check Redis once so a wrong URL is reported at start; a Redis that is down is not fatal."""
        try:
            await self.redis.ping()
        except Exception as exc:  # noqa: BLE001 - any failure here is only reported
            log.warning(
                "Redis at %s is not reachable yet (%s); CONNECTs follow auth.on_redis_down=%s",
                redact(self.config.redis.url),
                exc,
                self.config.auth.on_redis_down,
            )
        await self.marker.start()
        redis_up = self.durable_writer is None or await self._redis_answers()
        if not redis_up:
            log.error(
                "durable state is NOT persisted: Redis at %s is not reachable; retained messages live in memory "
                "until it answers (then they are written; acknowledgements of QoS 1/2 retained messages wait "
                "for it)",
                redact(self.config.redis.url),
            )
        if self.token_keys is not None:
            await self.token_keys.start()  # a JWKS is fetched before the first CONNECT
        self.listener.start()
        await self._start_retained(wait=redis_up)
        self.gate.start()
        await self.quota.start()
        await self.metrics.start()
        bind = self.config.metrics.prometheus_bind
        if bind:
            from .metrics.prometheus import start_endpoint  # prometheus_client is only imported when used

            self.metrics_endpoint = await start_endpoint(bind, self.metrics, self.readiness)
        health = self.config.metrics.health_bind
        if health and health != bind:
            self.health_endpoint = await start_health_endpoint(health, self.readiness)

    async def _start_retained(self, wait: bool) -> None:
        """Load the retained messages once the invalidation listener tracks their prefix, so that no change
        falls between the load and the tracking; a listener not connected yet (Redis away) reloads them
        when it is (its first connection calls no on_reset)."""
        if not self.retained.durable:
            return
        if wait:  # (not when Redis did not answer just now)
            try:
                await asyncio.wait_for(self.listener.connected.wait(), STARTUP_TRACKING_WAIT)
            except TimeoutError:
                pass
        tracked = self.listener.connected.is_set()
        await self.retained.start()
        if not tracked:
            self._retained_catchup = asyncio.get_running_loop().create_task(self._reload_retained_when_tracked())

    async def _reload_retained_when_tracked(self) -> None:
        await self.listener.connected.wait()
        self.retained.on_reset()

    def _durable_lost(self, n: int) -> None:
        """Writes needing no acknowledgement dropped while Redis was away: counted (`durable_writes_lost`)."""
        self.counters.incr(None, C.DURABLE_LOST, n)

    async def _redis_answers(self) -> bool:
        try:
            await self.redis.ping()
        except Exception:  # noqa: BLE001 - only reported
            return False
        return True

    async def start_cluster(self, on_remote: OnRemote) -> Cluster | None:
        """Join the cluster (issue 18, docs/scaling.md) when `cluster.enabled`: a `ClusterNode` under the
        quota registry's broker id (its heartbeat is how the other brokers learn this one died), its Redis
        clients behind the trust gate like every other. `on_remote` receives the other brokers' messages
        (the engine's). Stopped by `close`, before the quota registry unregisters this broker."""
        cfg = self.config.cluster
        if not cfg.enabled or self.cluster is not None:
            return self.cluster

        def client(url: str, **options: Any) -> Any:
            redis = make_async_client(url, **options)
            gate(redis, self.trust)
            return redis

        self.cluster = ClusterNode(
            self.config.redis.url,
            self.keys,
            self.quota.broker_id,
            on_remote,
            routes_maxlen=cfg.routes_maxlen,
            inbox_maxlen=cfg.inbox_maxlen,
            buffer_limit=cfg.buffer_limit,
            liveness_interval=cfg.liveness_interval,
            absent_grace=cfg.absent_grace,
            client=client,
        )
        await self.cluster.start()
        self.metrics.cluster = self.cluster.counters  # on /metrics (docs/analytics.md)
        return self.cluster

    async def close(self) -> None:
        if self.cluster is not None:  # forward what waits and leave, while the heartbeat still runs
            await self.cluster.stop()
            self.cluster = None
            self.metrics.cluster = None
        await cancel_and_wait(self._retained_catchup)
        for task in list(self._revocation_confirms):
            await cancel_and_wait(task)
        await self.retained.stop()
        if self.durable_writer is not None:
            await self.durable_writer.close()  # what the engine submitted, while Redis is still open
        if self.durable_redis is not None:
            await self.durable_redis.aclose()
        if self.metrics_endpoint is not None:
            self.metrics_endpoint.close()
            self.metrics_endpoint = None
        if self.health_endpoint is not None:
            self.health_endpoint.close()
            self.health_endpoint = None
        await self.metrics.close()  # the last counts, while Redis is still open
        await self.quota.close()  # hand back leases, unregister sessions, while Redis is still open
        await self.listener.stop()
        await self.gate.close()
        await self.marker.close()
        await self._user_refresh.stop()
        if self.token_keys is not None:
            await self.token_keys.close()
        self.authenticator.close()
        await self.redis.aclose()

    # -- client lifecycle ----------------------------------------------------------------------
    async def authenticate(
        self,
        *,
        username: str | None,
        password: str | None,
        cert_identity: str | None = None,
        identity_as_username: bool = False,
        listener: Any = None,
        address: str | None = None,
        bearer: AccessToken | None = None,
    ) -> AuthResult:
        """A CONNECT's verdict: a ban of its source address first (no hash work), then the file-backed
        auth backends, then the Redis authenticator; a failure a guesser earns counts towards a ban.
        `bearer`: the access token verified at the websockets upgrade (`verify_bearer`)."""
        address = canonical_address(address)
        gate = self.gate
        ban = gate.check(address, username)
        if ban is not None:
            return AuthResult(Outcome.BANNED if ban.kind == KIND_MANUAL else Outcome.THROTTLED, username)
        redis = functools.partial(
            self.authenticator.authenticate,
            username=username,
            password=password,
            cert_identity=cert_identity,
            identity_as_username=identity_as_username,
            address=address,
            bearer=bearer,
        )
        token = bearer is not None or (self.authenticator.tokens is not None and password and looks_like_jwt(password))
        found: AuthResult | None = None
        for backend in () if token else self.auth_backends:  # a token's identity: no file-backed backend's
            found = await backend.authenticate(
                username=username,
                password=password,
                listener=listener,
                identity_as_username=identity_as_username,
                fallback=redis,
            )
            if found is not None:
                break
        result = found if found is not None else await redis()
        if result.outcome in _GUESSES:
            gate.failed(address, username)
        return result

    async def verify_bearer(self, token: str | None, address: str | None = None) -> tuple[AccessToken | None, int, str]:
        """A websockets upgrade's bearer token (docs/tokens.md): (the token, 0, "") when it may upgrade, else
        (None, HTTP status, reason): 403 for a banned or throttled source address (login throttling, as a
        CONNECT), 401 for a missing, malformed, invalid or expired token, 403 for a revoked one, 503 while
        revocations cannot be read (auth.on_redis_down: deny). A forged or invalid token counts towards
        the address's ban as a wrong password does: upgrades are no way around login throttling."""
        address = canonical_address(address)
        ban = self.gate.check(address, None)
        if ban is not None:
            return None, 403, "address banned" if ban.kind == KIND_MANUAL else "too many failed logins (throttled)"
        verifier = self.authenticator.tokens
        if verifier is None:
            return None, 401, "access tokens are not configured (auth.jwt)"
        if not token:
            return None, 401, "no access token"
        try:
            grant = await verifier.verify(token)
        except TokenError as exc:
            if exc.kind not in (EXPIRED, MISMATCH):  # what a CONNECT counts too (BAD_TOKEN): a guess
                self.gate.failed(address, None)
            return None, 401, exc.detail
        refused = await self.authenticator.token_revoked(grant)
        if refused is Outcome.TOKEN_REVOKED:
            return None, 403, "access token revoked"
        if refused is not None:
            return None, 503, "revocations cannot be checked (Redis unavailable)"
        return grant, 0, ""

    async def reload(self) -> None:
        """SIGHUP: file-backed sources re-read their files (Redis-backed state is always live)."""
        try:
            sources: list[AuthBackend | AclSource] = [*self.auth_backends, *self.acl_sources]
            for source in {id(s): s for s in sources}.values():  # each once: one object may be both
                await source.reload()
        finally:
            self.acl_epoch += 1

    async def attach(
        self,
        client_id: str,
        result: AuthResult,
        listener: str = "",
        listener_config: Any = None,
        address: str | None = None,
    ) -> GuardClient:
        """Register an admitted client and load the ACL rules it depends on before its CONNACK."""
        token = result.token
        subject = _subject(
            client_id, result.username if not result.anonymous else None, result.user, token.rules if token else ()
        )
        client = GuardClient(
            client_id,
            subject.username,
            subject,
            listener,
            had_record=result.user is not None,
            listener_config=listener_config,
            address=canonical_address(address),
            token=token,
            plan=result.plan if result.plan is not None else (token.plan if token is not None else None),
        )
        try:
            await self.acl.prepare(subject)
        except REDIS_ERRORS as exc:
            log.warning(
                "client %r admitted while Redis is unreachable (%s): ACL rules known so far apply", client_id, exc
            )
        try:
            await self.quota.attach(client)  # raises QuotaRefusal (blocked, too many sessions) or ClientIdHeld
        except BaseException:
            self.acl.policy.forget(subject)
            raise
        self.clients[client_id] = client
        if token is not None and token.expires_at is not None:
            loop = asyncio.get_running_loop()
            delay = max(0.0, token.expires_at - time.time())
            client.expiry = loop.call_at(loop.time() + delay, self._token_expired, client)
        self.counters.connected(client_id, client.username)
        if client.username is not None:
            self._by_user.setdefault(client.username, set()).add(client_id)
        return client

    def detach(self, client: GuardClient) -> None:
        if client.expiry is not None:
            client.expiry.cancel()
            client.expiry = None
        self.quota.detach(client)
        if self.clients.get(client.client_id) is client:
            del self.clients[client.client_id]
            self.counters.disconnected(client.client_id)
            if client.username is not None:
                ids = self._by_user.get(client.username)
                if ids is not None:
                    ids.discard(client.client_id)
                    if not ids:
                        del self._by_user[client.username]
        self.acl.policy.forget(client.subject)

    # -- decisions (hot path, no Redis) ---------------------------------------------------------
    def may(self, client: GuardClient, action: Perm, topic: str) -> bool:
        if self.acl_sources:
            allowed = self._file_and_redis(client, action, topic)
        else:
            allowed = self.acl.allowed(client.subject, action, topic)
        if allowed:
            return True
        if action is Perm.PUBLISH:
            self.counters.incr(client.client_id, C.DENIED_PUBLISH)
            acl_log.log(
                logging.INFO,
                (client.client_id, topic),
                "denied PUBLISH of client %r (user %r) to %r",
                client.client_id,
                client.username,
                topic,
            )
        elif action is Perm.SUBSCRIBE:
            self.counters.incr(client.client_id, C.DENIED_SUBSCRIBE)
        else:
            self.counters.incr(client.client_id, C.WITHHELD)  # (logged by the engine, per subscription filter)
        return False

    def _file_and_redis(self, client: GuardClient, action: Perm, topic: str) -> bool:
        """File ACL sources next to Redis rules: a Redis deny rule (or an invalid topic) denies, then a
        grant from Redis or from any file source allows (mosquitto-compat/README.md)."""
        decision = self.acl.decide(client.subject, action, topic)
        if decision.allowed:
            return True
        if decision.rule is not None or decision.reason.startswith("invalid"):
            return False  # a Redis deny rule matched
        return any(source.check(client, action, topic) for source in self.acl_sources)

    # -- quotas (hot path, no Redis; docs/quotas.md) ----------------------------------------------
    def admit_publish(self, client: GuardClient, topic: str, payload_len: int, qos: int) -> bool:
        """After the ACL allowed an inbound PUBLISH: False = over quota (rate, events, bytes); drop it
        (QoS 1/2 still acknowledged). Counted as over_quota; on_exceed: disconnect kicks and blocks."""
        if self.message_size_limit and payload_len > self.message_size_limit:
            return False  # mosquitto.conf message_size_limit: dropped silently, as mosquitto does
        return self.quota.book.admit_publish(client, topic, payload_len, qos)

    def admit_delivery(self, client: GuardClient, topic: str, payload_len: int) -> bool:
        """After the RECEIVE ACL allowed a delivery to `client`: False = withhold it (over quota)."""
        return self.quota.book.admit_delivery(client, topic, payload_len)

    def delivery_group(self, clients: list[GuardClient], topic: str = "") -> Any:
        """`admit_delivery` for one message on `topic` to each of `clients` at once: `.admit(topic,
        payload_len)` returns None (all admitted) or the ids withheld; `.current()` False = build a new group."""
        return self.quota.delivery_group(clients, topic)

    def open_stretch(self, client: GuardClient | None, remaining: int) -> Any:
        """Quota accounting for the engine's synchronous run over `remaining` buffered bytes of PUBLISH
        packets (quota/stretch.py): None when too small to be worth it. With `.pub_ok` the run's
        PUBLISHes are prepaid (the engine counts `.n`/`.b` instead of calling `admit_publish`);
        delivery groups reserve through it. `settle_stretch` before the engine awaits anything."""
        b = stretch_bound(remaining)
        if b is None:
            return None
        if self.message_size_limit and remaining > self.message_size_limit:
            client = None  # a PUBLISH of the run may be too large: each is checked by admit_publish
        return open_stretch(self.quota.book, client, *b)

    def settle_stretch(self, st: Any) -> None:
        settle_stretch(self.quota.book, st)

    def bind_engine(self, engine: Engine) -> None:
        """The engine registers itself: kicks go to it, the quota heartbeat and the analytics read its
        queue depths."""
        self.engine = engine

    async def kick(self, client_id: str, reason: str, code: int = KICKED) -> bool:
        """Disconnect a client of this broker, counted by reason (the Guard's own kicks, the quota
        enforcer's, the sidecar's and `mqtt-guard kick` all come through here); `code`: the MQTT 5
        DISCONNECT reason (mqtt_guard/reasons.py). False: no such client is connected here (nothing
        counted)."""
        engine = self.engine
        if engine is None:
            return False
        done = await engine.kick(client_id, reason, code)
        if done:
            self.counters.incr(client_id, C.kick_name(reason))
        return done

    async def drop_session(self, client_id: str, reason: str) -> bool:
        """Discard a client's session on this broker (`mqtt-guard session drop`, through the kick queue).
        False: no such session here."""
        engine = self.engine
        return engine is not None and await engine.drop_session(client_id, reason)

    def forget_session(self, client_id: str, by: str) -> bool:
        """A persistent session this broker holds offline was resumed on broker process `by` (durable
        state): this broker's copy goes, the stored one stays."""
        engine = self.engine
        return engine is not None and engine.forget_session(client_id, by)

    def session_moved(self, proc: str, client_id: str) -> None:
        """This broker resumed a stored session another broker process (`proc`) owned: tell it."""
        if proc and proc != self.quota.broker_id:
            self.quota.tell(proc, {"forget": client_id, "by": self.quota.broker_id})

    def _kick_banned(self, ban: Ban) -> None:
        """An admin's ban with `--kick` arrived: disconnect this broker's clients from its network."""
        inside = ban_matcher(ban)
        for client in list(self.clients.values()):
            if client.address is not None and inside(client.address):
                asyncio.get_running_loop().create_task(self.kick(client.client_id, f"blocked: {ban.reason}", BLOCKED))

    def _token_expired(self, client: GuardClient) -> None:
        """A client's access token expired while it was connected: the broker disconnects it itself."""
        client.expiry = None
        if self.clients.get(client.client_id) is client:
            log.info("client %r (user %r): access token expired", client.client_id, client.username)
            asyncio.get_running_loop().create_task(self.kick(client.client_id, "access token expired", TOKEN_EXPIRED))

    def _revocation_changed(self, jtis: set[str]) -> None:
        """`revoked:<jti>` keys changed: a revoke, but also an unrevoke or a TTL expiry. If connected
        clients hold one of these jtis, ask Redis (one round trip for the batch) which are revoked now,
        and kick only those: a client that reconnected after an unrevoke stays."""
        held = {c.token.jti for c in self.clients.values() if c.token is not None and c.token.jti in jtis}
        if not held:
            return  # no client holds them: nothing to ask
        task = asyncio.get_running_loop().create_task(self._confirm_revoked(held))
        self._revocation_confirms.add(task)
        task.add_done_callback(self._revocation_confirms.discard)

    async def _confirm_revoked(self, jtis: set[str]) -> None:
        store = self.authenticator.revocations
        if store is None:
            return
        try:
            revoked = await store.still_revoked(jtis)
        except REDIS_ERRORS:
            # Unknown: fail as CONNECT does (auth.on_redis_down): deny kicks, cached keeps the clients; a
            # missed revocation is caught again by the recheck when the invalidation channel resets.
            if self.config.auth.on_redis_down != "deny":
                return
            log.warning("revocation of jti %s cannot be confirmed (Redis unavailable): kicking", sorted(jtis))
            revoked = jtis
        if revoked:
            self._revoked(revoked)

    def _revoked(self, jtis: set[str]) -> None:
        """Tokens were revoked (`mqtt-guard token revoke`): their connected clients go at once."""
        for client in list(self.clients.values()):
            token = client.token
            if token is not None and token.jti in jtis:
                log.warning("client %r (user %r): token %r revoked", client.client_id, client.username, token.jti)
                asyncio.get_running_loop().create_task(
                    self.kick(client.client_id, "access token revoked", TOKEN_REVOKED)
                )

    def queue_depth(self, client_id: str) -> tuple[int, int]:
        """The engine's `queue_depth` ((0, 0) before an engine is bound)."""
        return self.engine.queue_depth(client_id) if self.engine is not None else (0, 0)

    def queue_depths(self) -> dict[str, tuple[int, int]]:
        """The engine's `queue_depths` (empty before an engine is bound)."""
        return self.engine.queue_depths() if self.engine is not None else {}

    # -- Redis told us something changed --------------------------------------------------------
    def _on_keys(self, keys: list[str]) -> None:
        if self.keys.generation() in keys:
            self.marker.check()
        elif self.keys.schema() in keys:
            self.marker.check(suspect=False)
        if self.trust.reason is not None:
            return  # nothing read from an untrusted Redis is applied; trust coming back reloads it all
        self.acl.on_keys(keys)
        self.retained.on_keys(keys)
        self.quota.on_keys(keys)
        self.gate.on_keys(keys)
        if self.token_keys is not None:
            jtis = {j for j in map(self.keys.jti_of, keys) if j is not None}
            if jtis:
                self._revocation_changed(jtis)
        users = {u for u in map(self._user_of_key, keys) if u is not None}
        for u in users:
            self.authenticator.forget(u)
        self._user_refresh.add(u for u in users if u in self._by_user)

    def _on_reset(self) -> None:
        """Changes may have been missed (reconnect, FLUSHALL): is it still our data? Then reload all."""
        self.marker.check()

    async def _recheck_revocations(self) -> None:
        """Revocations may have been missed (the invalidation channel was down): ask Redis for the jti of
        every connected token client."""
        for client in list(self.clients.values()):
            token = client.token
            if token is None or token.jti is None or self.clients.get(client.client_id) is not client:
                continue
            try:
                refused = await self.authenticator.token_revoked(token)
            except Exception:  # noqa: BLE001 - retried at the next reset; never kills the caller
                return
            if refused is Outcome.TOKEN_REVOKED:
                self._revoked({token.jti})

    def _reload_all(self) -> None:
        if self.token_keys is not None and self.clients:
            self._revocation_check = asyncio.get_running_loop().create_task(self._recheck_revocations())
        self.listener.stale()  # records kept may predate changes skipped while Redis was distrusted
        self.acl.on_reset()
        self.retained.on_reset()
        self.quota.on_reset()
        self.gate.on_reset()
        self._user_refresh.add(self._by_user)

    def _user_of_key(self, key: str) -> str | None:
        head = self.keys.user("")
        if not key.startswith(head):
            return None
        rest = key[len(head) :]
        return rest[: -len(":groups")] if rest.endswith(":groups") else rest

    async def _refresh_users(self, batch: set[str]) -> set[str]:
        """A connected user's groups or superuser flag changed, or the user was disabled/deleted: re-read
        each record; the users whose record could not be read (Redis unreachable) are retried."""
        failed: set[str] = set()
        for username in batch:
            try:
                record = await self.users.get(username)
            except REDIS_ERRORS:
                failed.add(username)
                continue
            except Exception:  # a corrupt record: keep the current subject
                log.exception("cannot re-read user %r", username)
                continue
            await self._apply_user(username, record)
        return failed

    async def _apply_user(self, username: str, record: UserRecord | None) -> None:
        ids = list(self._by_user.get(username, ()))
        for client_id in ids:
            client = self.clients.get(client_id)
            if client is None:
                continue
            gone = (record is None and client.had_record) or (
                record is not None and (record.disabled or record.expired())
            )
            if gone:
                reason = "user deleted" if record is None else ("user disabled" if record.disabled else "user expired")
                log.warning("disconnecting client %r: %s", client_id, reason)
                await self.kick(client_id, reason, USER_REVOKED)
                continue
            new = _subject(client_id, username, record, client.subject.rules)
            if new != client.subject:
                try:
                    await self.acl.prepare(new)
                except REDIS_ERRORS:
                    pass
                self.acl.policy.forget(client.subject)
                client.subject = new


def _subject(client_id: str, username: str | None, user: UserRecord | None, rules: tuple[Any, ...] = ()) -> Subject:
    return Subject(
        username=username,
        client_id=client_id,
        groups=user.groups if user is not None else frozenset(),
        superuser=bool(user and user.superuser),
        rules=rules,
    )


def _session_owner(broker_id: str) -> str:
    """The stable owner id of this broker's persistent sessions: `metrics.broker_id`, and under
    `--workers` the worker's number too (every worker is a broker of its own; the same number gets its
    sessions back after a restart)."""
    worker = os.environ.get("MQTT_GUARD_WORKER", "")
    return f"{broker_id}/worker-{worker.partition('/')[0]}" if worker else broker_id
