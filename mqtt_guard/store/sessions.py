"""Persistent sessions in Redis: the keys (store/keys.py `psession*`), the write ops the BatchWriter
sends (store/batch.py: each op idempotent, every value fixed when it is built), and the reads.

Keys, per client id (docs/redis-schema.md):
- `psession:r:<client id>` STRING: the record (durable/sessions.py `encode_record`);
- `psession:q:<client id>` HASH: `m:<seq>` -> a stored message, `i:<packet id>` -> "" (inbound QoS 2
  waiting for PUBREL), `~n`/`~b`: how many messages / bytes (kept by the scripts below, for the bound).
While the session is offline both keys carry the same PEXPIREAT (its expiry); a resume removes it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..durable.sessions import CorruptSession, StoredSession, decode_record, decode_session
from .keys import Keys, glob_escape

Op = Callable[[Any], None]

# Add (or replace) messages, bounded: ARGV[1] max messages (0: no limit), ARGV[2] max bytes (0: no
# limit), then field, value pairs; a new field only while under both bounds; the hash takes the record's
# expiry. Returns how many were stored (the rest: over the bound, dropped). Idempotent: a re-sent add
# finds its fields.
ADD_LUA = """
local maxn, maxb = tonumber(ARGV[1]), tonumber(ARGV[2])
local n = tonumber(redis.call('HGET', KEYS[1], '~n') or '0')
local b = tonumber(redis.call('HGET', KEYS[1], '~b') or '0')
local stored = 0
for i = 3, #ARGV, 2 do
  local field, value = ARGV[i], ARGV[i + 1]
  local size = string.len(value)
  local old = redis.call('HGET', KEYS[1], field)
  if old then
    redis.call('HSET', KEYS[1], field, value)
    b = b + size - string.len(old)
    stored = stored + 1
  elseif not ((maxn > 0 and n >= maxn) or (maxb > 0 and b + size > maxb)) then
    redis.call('HSET', KEYS[1], field, value)
    n = n + 1
    b = b + size
    stored = stored + 1
  end
end
redis.call('HSET', KEYS[1], '~n', n, '~b', b)
local ttl = redis.call('PTTL', KEYS[2])
if ttl > 0 then redis.call('PEXPIRE', KEYS[1], ttl) end
return stored
"""

# Replace a message that is still stored (its packet id, its QoS 2 state); one already removed (acked)
# is not brought back. Idempotent.
UPDATE_LUA = """
local old = redis.call('HGET', KEYS[1], ARGV[1])
if not old then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HINCRBY', KEYS[1], '~b', string.len(ARGV[2]) - string.len(old))
return 1
"""

# Remove messages (delivered, expired or dropped): ARGV, their fields. Idempotent.
REMOVE_LUA = """
local removed = 0
for i = 1, #ARGV do
  local old = redis.call('HGET', KEYS[1], ARGV[i])
  if old then
    redis.call('HDEL', KEYS[1], ARGV[i])
    redis.call('HINCRBY', KEYS[1], '~n', -1)
    redis.call('HINCRBY', KEYS[1], '~b', -string.len(old))
    removed = removed + 1
  end
end
return removed
"""

# Discard the stored session, unless (ARGV[1] "owned") another user's session is stored under the id
# (auth.client_id_policy owns ids: not this client's to discard; ARGV[2]: the connecting identity, ""
# anonymous), or (ARGV[1] "mine") another broker process owns it now (it was resumed there: this broker's
# copy ending must not delete it; ARGV[2]: this process).
DISCARD_LUA = """
local raw = redis.call('GET', KEYS[1])
if raw then
  local ok, rec = pcall(cjson.decode, raw)
  if ok and type(rec) == 'table' then
    local field = 'proc'
    if ARGV[1] == 'owned' then field = 'username' end
    local value = rec[field]
    if type(value) ~= 'string' then value = '' end
    if value ~= ARGV[2] then return 0 end
  end
end
redis.call('DEL', KEYS[1], KEYS[2])
return 1
"""


class Fields:
    """An op that takes more fields until the BatchWriter builds it (`built`): the writes of one session
    in one batch go out as one script call. Once built its items never change, so a re-sent batch sends
    the same command (idempotent)."""

    __slots__ = ("items", "built", "_emit")

    def __init__(self, emit: Callable[[Any, list[Any]], None]) -> None:
        self.items: list[Any] = []
        self.built = False
        self._emit = emit

    def __call__(self, pipe: Any) -> None:
        self.built = True
        self._emit(pipe, self.items)


class SessionStore:
    """Builds the ops of persistent sessions and reads them back. `redis`: a client made with
    decode_responses=False (message payloads are binary)."""

    def __init__(self, redis: Any, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys

    # -- writes (ops for the BatchWriter) ---------------------------------------------------------
    def save(self, client_id: str, record: str, expire_at_ms: int | None) -> Op:
        """The record, whole; with `expire_at_ms` (unix ms) both keys expire then, else they persist."""
        rkey, qkey = self.keys.psession(client_id), self.keys.psession_messages(client_id)

        def op(pipe: Any) -> None:
            if expire_at_ms is None:
                pipe.set(rkey, record)
                pipe.persist(qkey)
            else:
                pipe.set(rkey, record, pxat=expire_at_ms)
                pipe.pexpireat(qkey, expire_at_ms)

        return op

    def add(self, client_id: str, max_messages: int, max_bytes: int) -> Fields:
        """Adds of messages (`Fields.items`: field, value, value, ...), one script call for all of them."""
        keys = (self.keys.psession_messages(client_id), self.keys.psession(client_id))
        return Fields(lambda pipe, items: pipe.eval(ADD_LUA, 2, *keys, max_messages, max_bytes, *items))

    def update(self, client_id: str, field: str, value: bytes) -> Op:
        qkey = self.keys.psession_messages(client_id)
        return lambda pipe: pipe.eval(UPDATE_LUA, 1, qkey, field, value)

    def remove(self, client_id: str) -> Fields:
        """Removals of messages (`Fields.items`: their fields), one script call for all of them."""
        qkey = self.keys.psession_messages(client_id)
        return Fields(lambda pipe, items: pipe.eval(REMOVE_LUA, 1, qkey, *items))

    def mark_inbound(self, client_id: str, field: str, present: bool) -> Op:
        """An inbound QoS 2 packet id routed and PUBREC'd (present) or released by PUBREL (not)."""
        qkey = self.keys.psession_messages(client_id)
        if present:
            return lambda pipe: pipe.hset(qkey, field, b"")
        return lambda pipe: pipe.hdel(qkey, field)

    def discard(self, client_id: str, identity: str | None = None, owned: bool = False, proc: str | None = None) -> Op:
        """Delete the stored session (`owned`: only if it is `identity`'s; `proc`: only if that broker
        process owns it; see DISCARD_LUA)."""
        keys = (self.keys.psession(client_id), self.keys.psession_messages(client_id))
        if owned:
            return lambda pipe: pipe.eval(DISCARD_LUA, 2, *keys, "owned", identity or "")
        if proc is not None:
            return lambda pipe: pipe.eval(DISCARD_LUA, 2, *keys, "mine", proc)
        return lambda pipe: pipe.delete(*keys)

    # -- reads --------------------------------------------------------------------------------------
    async def load(self, client_id: str) -> StoredSession | None:
        """The stored session of `client_id` (one round trip), None when there is none. Raises
        CorruptSession (durable/sessions.py) for one that cannot be decoded, and Redis' errors."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.get(self.keys.psession(client_id))
            pipe.hgetall(self.keys.psession_messages(client_id))
            record, fields = await pipe.execute()
        if record is None:
            return None
        return decode_session(record, fields or {})

    async def owned_by(self, broker: str, batch: int = 500) -> tuple[list[str], int]:
        """Client ids of the stored sessions whose owner is `broker` (a SCAN over the records, at start:
        a restarted broker serves its offline sessions' subscriptions again), and how many records could
        not be decoded (skipped)."""
        found: list[str] = []
        corrupt = 0
        async for key in self.redis.scan_iter(match=glob_escape(self.keys.psession_head()) + "*", count=batch):
            name = key.decode("utf-8", "replace") if isinstance(key, bytes) else str(key)
            cid = self.keys.psession_client_of(name)
            raw = await self.redis.get(name) if cid is not None else None
            if cid is None or raw is None:
                continue
            try:
                record = decode_record(raw)
            except CorruptSession:
                corrupt += 1
                continue
            if record.broker == broker:
                found.append(cid)
        return found, corrupt
