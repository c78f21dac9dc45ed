"""Verification keys of access tokens (docs/tokens.md "Access tokens (JWT)"): a secret, a public key file, or a
JWKS URL.

Why the design looks like this:
- Keys are parsed once, when loaded or fetched; a CONNECT only picks one (`candidates`).
- A JWKS is fetched in the background (aiohttp) every `jwks_refresh`, so an issuer's key rotation needs no
  restart. A token naming a `kid` not in the set triggers one fetch at once (a key published after our last
  fetch), at most one per `jwks_min_refresh`: a flood of tokens with made-up kids costs one request per
  interval, not one per token, and concurrent CONNECTs share the fetch in flight.
- A JWKS that cannot be fetched or does not parse never replaces the last good keys: an issuer's outage or
  a bad deploy of its key set does not lock every client out. The reason is logged (rate-limited).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import aiohttp
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, Key, OctKey, OKPKey, RSAKey, import_key

from ..config import JwtConfig
from ..logutil import RateLimitedLog
from ..tasks import cancel_and_wait

log = logging.getLogger("mqtt_guard.auth.jwks")
fetch_log = RateLimitedLog(log, interval=60.0)


class KeysError(ValueError):
    """Keys that cannot be used, with the reason (a JWKS or key file that does not parse)."""


def _pick(keys: Sequence[Key], kid: str | None, kty: str) -> list[Key]:
    fitting = [k for k in keys if k.key_type == kty]
    if kid is None:
        return fitting
    return [k for k in fitting if k.kid == kid]


def parse_jwks(data: bytes | str) -> list[Key]:
    """The signature keys of a JWKS document; raises KeysError when it does not parse or holds none.
    Keys of unknown type or for encryption (`use: enc`) are skipped, as RFC 7517 section 5 says."""
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise KeysError(f"not JSON ({exc})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise KeysError('not a JWK set (expected {"keys": [...]})')
    keys: list[Key] = []
    problems: list[str] = []
    for i, entry in enumerate(doc["keys"]):
        if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
            continue
        try:
            keys.append(import_key(entry))
        except (JoseError, ValueError, TypeError, KeyError) as exc:
            problems.append(f"keys[{i}] ({entry.get('kid')!r}): {exc}")
    if not keys:
        raise KeysError("no usable signature key" + (f": {'; '.join(problems)}" if problems else ""))
    for problem in problems:
        log.warning("JWKS: skipped a key that does not import: %s", problem)
    return keys


def load_key_file(path: str) -> list[Key]:
    """A PEM public key, a JWK or a JWK set, from a file."""
    raw = Path(path).read_bytes()
    if raw.lstrip().startswith(b"{"):
        doc = json.loads(raw)
        return parse_jwks(raw) if isinstance(doc, dict) and "keys" in doc else [import_key(doc)]
    public = load_pem_public_key(raw)
    if isinstance(public, rsa.RSAPublicKey):
        return [RSAKey.import_key(raw)]
    if isinstance(public, ec.EllipticCurvePublicKey):
        return [ECKey.import_key(raw)]
    if isinstance(public, ed25519.Ed25519PublicKey):
        return [OKPKey.import_key(raw)]
    raise KeysError(f"{path}: unsupported public key type {type(public).__name__}")


MAX_JWKS_BYTES = 1 << 20
"""A JWKS answer larger than this is refused (the last good keys stay): a key set is a few kB, and a
broken or hostile endpoint must not make every broker buffer an unbounded body."""


async def _read_capped(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """The body, or KeysError once it passes `limit` bytes (announced or read)."""
    if response.content_length is not None and response.content_length > limit:
        raise KeysError(f"answer of {response.content_length} bytes is larger than the {limit} bytes allowed")
    body = bytearray()
    async for chunk in response.content.iter_chunked(65536):
        body += chunk
        if len(body) > limit:
            raise KeysError(f"answer is larger than the {limit} bytes allowed")
    return bytes(body)


class StaticKeys:
    """`auth.jwt.secret` or `auth.jwt.public_key_file`: loaded once at start."""

    def __init__(self, keys: list[Key]) -> None:
        self.keys = keys

    @classmethod
    def from_config(cls, config: JwtConfig) -> StaticKeys:
        if config.secret:
            return cls([OctKey.import_key(config.secret.encode())])
        assert config.public_key_file
        return cls(load_key_file(config.public_key_file))

    async def candidates(self, kid: str | None, kty: str) -> Sequence[Key]:
        picked = _pick(self.keys, kid, kty)
        # A single configured key verifies tokens whatever kid they name (issuers often add one).
        return picked or (_pick(self.keys, None, kty) if len(self.keys) == 1 else [])

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None


class JwksKeys:
    """`auth.jwt.jwks_url`: fetched at start and every `jwks_refresh`, and at once for an unknown kid."""

    def __init__(
        self, url: str, *, refresh: float, min_refresh: float, timeout: float = 5.0, max_bytes: int = MAX_JWKS_BYTES
    ) -> None:
        self.url = url
        self.max_bytes = max_bytes
        self.refresh_interval = refresh
        self.min_refresh = min_refresh
        self.timeout = timeout
        self.keys: list[Key] = []
        self.fetched_at = 0.0  # monotonic time of the last good fetch (0: none yet)
        self.fetches = 0  # fetch attempts, good or bad
        self._last_attempt = -float("inf")
        self._inflight: asyncio.Future[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        await self.refresh()
        self._task = asyncio.create_task(self._run(), name="mqtt-guard-jwks")

    async def close(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_interval)
            await self.refresh()

    async def candidates(self, kid: str | None, kty: str) -> Sequence[Key]:
        picked = _pick(self.keys, kid, kty)
        if picked or (kid is None and self.keys):
            return picked
        # an unknown kid, or no keys at all yet (the first fetch failed): fetch now, rate-limited
        if time.monotonic() - self._last_attempt >= self.min_refresh or self._inflight is not None:
            await self.refresh()
            picked = _pick(self.keys, kid, kty)
        return picked

    async def refresh(self) -> None:
        """Fetch the set once (a fetch in flight is shared); failures keep the last good keys."""
        if self._inflight is not None:
            await asyncio.shield(self._inflight)
            return
        self._inflight = asyncio.get_running_loop().create_future()
        try:
            await self._fetch()
        finally:
            self._inflight.set_result(None)
            self._inflight = None

    async def _fetch(self) -> None:
        self._last_attempt = time.monotonic()
        self.fetches += 1
        session = self._session
        if session is None:
            return
        try:
            async with session.get(self.url) as response:
                if response.status != 200:
                    raise KeysError(f"HTTP {response.status}")
                body = await _read_capped(response, self.max_bytes)
            keys = parse_jwks(body)
        except (aiohttp.ClientError, TimeoutError, OSError, KeysError) as exc:
            kept = f"keeping the {len(self.keys)} keys fetched before" if self.keys else "no keys yet"
            fetch_log.log(logging.ERROR, ("fetch", self.url), "JWKS at %s unusable (%s); %s", self.url, exc, kept)
            return
        if [k.kid for k in keys] != [k.kid for k in self.keys]:
            log.info("JWKS at %s: %d keys (kid %s)", self.url, len(keys), ", ".join(str(k.kid) for k in keys))
        self.keys = keys
        self.fetched_at = time.monotonic()


def key_source(config: JwtConfig) -> StaticKeys | JwksKeys:
    if config.jwks_url:
        return JwksKeys(config.jwks_url, refresh=config.jwks_refresh, min_refresh=config.jwks_min_refresh)
    return StaticKeys.from_config(config)


__all__ = ["MAX_JWKS_BYTES", "JwksKeys", "KeysError", "StaticKeys", "key_source", "load_key_file", "parse_jwks"]
