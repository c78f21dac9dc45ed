"""Admin operations: one implementation of each, called by the CLI (cli/) and the HTTP API (admin/).

Each function takes the Redis client and the `Keys` (narrow collaborators), does the work and returns
plain data; it prints nothing. Failures a caller must show its user raise an `OpError` subclass, whose
message is the sentence the CLI prints after `error:` and the API returns as `detail` (the subclass
picks the HTTP status).
"""

from __future__ import annotations


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


__all__ = ["Conflict", "Invalid", "NotFound", "OpError"]
