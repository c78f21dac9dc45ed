"""Metering in Redis (quota/meter.py): one hash per user per month, written in batches by brokers, read
by `mqtt-guard usage`. A batch is one script: it applies every increment unless the batch id was seen
(a retry after a lost reply), so each batch counts exactly once."""

from __future__ import annotations

import calendar
from typing import Any, cast

import redis.asyncio as aioredis

from ..quota.meter import Key, increments
from .keys import Keys

KEEP_DAYS = 400  # a month's hash expires this long after the month ended (billing looks back a year)
BATCH_TTL = 86400  # how long a batch id is remembered (retries come within seconds)

# KEYS[1]: the batch marker; KEYS[2..]: the month hashes. ARGV: ttl of the marker, then per increment
# the index of its key (2-based), field, amount, expire-at (unix s).
METER_LUA = """
if redis.call('SET', KEYS[1], '1', 'NX', 'EX', tonumber(ARGV[1])) == false then return 0 end
local i = 2
while i <= #ARGV do
  local key = KEYS[tonumber(ARGV[i])]
  redis.call('HINCRBY', key, ARGV[i + 1], tonumber(ARGV[i + 2]))
  redis.call('EXPIREAT', key, tonumber(ARGV[i + 3]))
  i = i + 4
end
return 1
"""


def expire_at(month: str) -> int:
    """KEEP_DAYS after the end of `month` (YYYY-MM)."""
    year, mon = int(month[:4]), int(month[5:7])
    end = calendar.timegm((year + (mon == 12), mon % 12 + 1, 1, 0, 0, 0))
    return end + KEEP_DAYS * 86400


class MeterStore:
    def __init__(self, redis: aioredis.Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys
        self._write = redis.register_script(METER_LUA)

    async def write(self, broker_id: str, seq: int, batch: dict[Key, list[int]]) -> bool:
        """Apply a batch once; False: this batch id was applied before (nothing done)."""
        keys: list[str] = [self.keys.usage_batch(broker_id, seq)]
        index: dict[str, int] = {}
        args: list[Any] = [BATCH_TTL]
        for month, username, field, n in increments(batch):
            key = self.keys.usage_month(username, month)
            if key not in index:
                keys.append(key)
                index[key] = len(keys)
            args += [index[key], field, n, expire_at(month)]
        if len(keys) == 1:
            return True
        return bool(await self._write(keys=keys, args=args))

    async def month(self, username: str, month: str) -> dict[str, str]:
        return cast(dict[str, str], await self.redis.hgetall(self.keys.usage_month(username, month)))

    async def users_of_month(self, month: str) -> list[str]:
        head = self.keys.usage_month("", month)
        out: list[str] = []
        async for key in self.redis.scan_iter(match=self.keys.usage_month_pattern(month), count=1000):
            out.append(str(key)[len(head) :])
        return sorted(out)
