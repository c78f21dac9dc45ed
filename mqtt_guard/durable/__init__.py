"""Durable state (issue 17, docs/durability.md): what outlives a broker process, kept in Redis.

Engine-independent rules: `retained.py` (the broker's local copy of the retained messages, kept fresh
from Redis); `sessions.py` (persistent sessions). The Redis keys and calls are in mqtt_guard/store/.
"""
