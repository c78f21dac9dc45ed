"""Admin operations: one implementation of each, called by the CLI (cli/) and the HTTP API (admin/).

Each function takes the Redis client and the `Keys` (narrow collaborators), does the work and returns
plain data; it prints nothing. Failures a caller must show its user raise an `OpError` subclass, whose
message is the sentence the CLI prints after `error:` and the API returns as `detail` (the subclass
picks the HTTP status).
"""

from __future__ import annotations

import math

from ..store.quota import MAX_BLOCK_SECONDS


class OpError(Exception):
    """An operation refused: the message says why, in words for an admin."""

    status = 400


class Invalid(OpError):
    """The request itself is wrong (a bad name, filter, duration...)."""

    status = 422


class NotFound(OpError):
    """The user (rule, session...) the operation is about does not exist."""

    status = 404


class Conflict(OpError):
    """The operation would overwrite something that exists (e.g. creating an existing user)."""

    status = 409


MAX_SECONDS = MAX_BLOCK_SECONDS
"""The longest block or ban with an end (ten years): a longer one is a typo, and Redis cannot expire a key
at an absurd time (PEXPIREAT of 1e300 s fails). A ban without an end is `seconds=None`."""
MAX_TIME = 253_402_300_799
"""The latest time a user's expiry may name (9999-12-31T23:59:59Z, unix seconds)."""


def check_number(value: float, what: str, low: float, high: float, *, low_open: bool = False) -> float:
    """`value` if it is a finite number in [low, high] (or (low, high]), else Invalid saying why: the check
    every caller (CLI and API) gets before anything is written."""
    if not math.isfinite(value):
        raise Invalid(f"{what} must be a finite number, got {value}")
    if value < low or (low_open and value == low):
        raise Invalid(f"{what} must be {'above' if low_open else 'at least'} {low:g}")
    if value > high:
        raise Invalid(f"{what} must be at most {high:g}")
    return value


__all__ = ["MAX_SECONDS", "MAX_TIME", "Conflict", "Invalid", "NotFound", "OpError", "check_number"]
