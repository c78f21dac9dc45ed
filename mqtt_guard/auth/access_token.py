"""Access tokens (JWT, docs/tokens.md): what a token must say for a CONNECT or a websockets upgrade to pass.

Why the design looks like this:
- The signature is checked by a maintained JOSE library (`joserfc`, chosen by measurement:
  docs/performance.md "Access tokens"); nothing here is cryptography. What is ours is the policy around
  it, kept in pure functions (`read_header`, `check_claims`, `acl_rules`, `token_of`) so each refusal is
  tested without keys or sockets.
- The algorithm comes from the token's header, so it is checked before any key is chosen: `none` is
  refused whatever the configuration says, and only `auth.jwt.algorithms` pass. The key is then picked
  by `kid` among keys whose type fits the algorithm (an RSA key never serves as an HMAC secret: that
  is the algorithm-confusion attack), and the library is told that one algorithm alone.
- Verification runs on the event loop: 30-130 us per token (EdDSA 265 us), measured, where a password
  hash costs milliseconds and needs the worker pool.
- Refusals carry a reason for the log and for the HTTP 401 body; it names the `kid`, `sub` or `jti` at
  most, never the token or a key.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from joserfc import jwt
from joserfc.errors import (
    BadSignatureError,
    InvalidKeyCurveError,
    InvalidKeyLengthError,
    JoseError,
    KeyParameterError,
    SecurityWarning,
)
from joserfc.jwk import Key

from ..acl.rules import Perm, Rule
from ..acl.topics import validate_filter
from ..config import JwtConfig

# RFC 9864 renames EdDSA to Ed25519; joserfc warns on every EdDSA token, which issuers still send.
warnings.filterwarnings("ignore", message="EdDSA is deprecated", category=SecurityWarning)

# Why a token was refused (the authenticator maps each to an Outcome).
MALFORMED = "malformed"
INVALID = "invalid"
EXPIRED = "expired"
MISMATCH = "mismatch"

_KTY = {"HS": "oct", "RS": "RSA", "ES": "EC", "Ed": "OKP"}  # algorithm family -> the key type that verifies it
RULE_SUBJECT = "token"  # Rule.subject of rules from a token's acl claim
_ACTIONS = {
    "publish": Perm.PUBLISH,
    # EMQX's `subscribe` lets the subscriber receive what it subscribed to: in our model that is both
    "subscribe": Perm.SUBSCRIBE | Perm.RECEIVE,
    "receive": Perm.RECEIVE,
    "all": Perm.ALL,
}
_RULE_KEYS = frozenset(("permission", "action", "topic"))


class TokenError(Exception):
    """A token refused; `kind` is one of the constants above, `detail` says why (no secret in it)."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail


@dataclass(frozen=True, slots=True)
class AccessToken:
    """What a verified token grants. The plans (issue 19 items 3-6) read `plan`."""

    identity: str  # the username_claim's value: the client's username
    jti: str | None
    expires_at: float | None  # unix seconds (exp + leeway) at which the broker disconnects the client
    kid: str | None
    rules: tuple[Rule, ...] = ()  # the trusted acl claim, in our ACL model
    plan: str | None = None  # the trusted plan claim (a plan name; the plans code resolves it)


class KeySource(Protocol):
    """Where verification keys come from (auth/jwks.py: a secret, a key file, a JWKS URL)."""

    async def candidates(self, kid: str | None, kty: str) -> Sequence[Key]:
        """Keys of type `kty` that may have signed a token with this `kid` (None: the token names none)."""
        ...


def looks_like_jwt(text: str) -> bool:
    """A password that is a compact JWS: three base64url parts, the first a JSON object (`eyJ`)."""
    return text.startswith("eyJ") and text.count(".") == 2


def _b64json(part: str, what: str) -> dict[str, Any]:
    try:
        raw = base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
        value = json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise TokenError(MALFORMED, f"malformed token: its {what} is not base64url-encoded JSON") from None
    if not isinstance(value, dict):
        raise TokenError(MALFORMED, f"malformed token: its {what} is not a JSON object")
    return value


def read_header(token: str, algorithms: Sequence[str]) -> tuple[str, str | None]:
    """(alg, kid) of a token, refused before any key is looked at: not three parts, `alg: none`, an
    algorithm not configured, a `crit` extension (none is supported)."""
    parts = token.split(".")
    if len(parts) != 3 or not all(parts[:2]):
        raise TokenError(MALFORMED, "malformed token: expected three base64url parts separated by dots (a JWS)")
    header = _b64json(parts[0], "header")
    alg = header.get("alg")
    if not isinstance(alg, str) or not alg:
        raise TokenError(MALFORMED, "malformed token: its header names no algorithm (alg)")
    if alg.lower() == "none":
        raise TokenError(INVALID, "unsigned token (alg: none) is never accepted")
    if alg not in algorithms:
        raise TokenError(INVALID, f"algorithm {alg!r} is not accepted (auth.jwt.algorithms: {', '.join(algorithms)})")
    if "crit" in header:
        raise TokenError(INVALID, "token header has critical extensions (crit), none of which is supported")
    kid = header.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise TokenError(MALFORMED, "malformed token: its kid is not a string")
    return alg, kid


def key_type(alg: str) -> str:
    return _KTY[alg[:2]]


_CURVES = {"ES256": ("P-256",), "ES384": ("P-384",), "ES512": ("P-521",), "EdDSA": ("Ed25519", "Ed448")}
# Errors about one key rather than the token: that key does not fit, another candidate may.
_KEY_ERRORS = (KeyParameterError, InvalidKeyCurveError, InvalidKeyLengthError)


def key_fits(key: Key, alg: str) -> bool:
    """Whether this key may verify a token of this algorithm: a JWK that names its own `alg` (RFC 7517
    4.4) serves that algorithm only, and an EC/OKP key's curve must be the algorithm's. Checked before
    trying a key, so a JWKS listing an RS384 key before the RS256 one still verifies a token with no kid."""
    if key.key_type != key_type(alg):
        return False
    named = key.get("alg")
    if named is not None and named != alg:
        return False
    curves = _CURVES.get(alg)
    return curves is None or key.get("crv") in curves


def _number(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TokenError(INVALID, f"claim {name} is not a number of seconds")
    return float(value)


def check_claims(
    claims: Mapping[str, Any], *, now: float, leeway: float, issuer: str | None, audience: str | None
) -> float | None:
    """Refuse a token whose time window or issuer/audience does not fit; its expiry (exp + leeway)."""
    exp = _number(claims, "exp")
    nbf = _number(claims, "nbf")
    if exp is not None and now > exp + leeway:
        raise TokenError(EXPIRED, f"token expired {now - exp:.0f} s ago")
    if nbf is not None and now + leeway < nbf:
        raise TokenError(INVALID, f"token not valid for another {nbf - now:.0f} s (nbf)")
    if issuer is not None and claims.get("iss") != issuer:
        raise TokenError(INVALID, "token issuer (iss) is not auth.jwt.issuer")
    if audience is not None:
        aud = claims.get("aud")
        names = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
        if audience not in names:
            raise TokenError(INVALID, "token audience (aud) does not include auth.jwt.audience")
    return exp + leeway if exp is not None else None


def acl_rules(value: Any) -> tuple[Rule, ...]:
    """The acl claim (EMQX's shape plus `receive`) as rules of our model; any malformed entry refuses the
    token (a rule skipped could be the deny that mattered)."""
    if not isinstance(value, list):
        raise TokenError(INVALID, "claim acl is not a list of rules")
    rules: list[Rule] = []
    for i, entry in enumerate(value):
        if not isinstance(entry, dict) or set(entry) - _RULE_KEYS or not _RULE_KEYS <= set(entry):
            raise TokenError(INVALID, f"claim acl[{i}]: expected exactly permission, action and topic")
        permission, action, topic = entry["permission"], entry["action"], entry["topic"]
        perm = _ACTIONS.get(action) if isinstance(action, str) else None
        if permission not in ("allow", "deny") or perm is None:
            raise TokenError(INVALID, f"claim acl[{i}]: permission allow|deny, action publish|subscribe|receive|all")
        bad = validate_filter(topic) if isinstance(topic, str) else "not a string"
        if bad is not None:
            raise TokenError(INVALID, f"claim acl[{i}]: topic filter {topic!r}: {bad}")
        allow, deny = (perm, Perm.NONE) if permission == "allow" else (Perm.NONE, perm)
        rules.append(Rule(topic, allow, deny, RULE_SUBJECT))
    return tuple(rules)


def token_of(claims: Mapping[str, Any], kid: str | None, config: JwtConfig, expires_at: float | None) -> AccessToken:
    """The grant of a verified token: its identity and, when trusted, its acl and plan claims."""
    identity = claims.get(config.username_claim)
    if not isinstance(identity, str) or not identity:
        raise TokenError(INVALID, f"token has no {config.username_claim} claim (auth.jwt.username_claim)")
    jti = claims.get("jti")
    if jti is not None and (not isinstance(jti, str) or not jti):
        raise TokenError(INVALID, "claim jti is not a non-empty string")
    trusted = config.trusted_claims
    rules: tuple[Rule, ...] = ()
    if "acl" in trusted and "acl" in claims:
        rules = acl_rules(claims["acl"])
    plan = None
    if "plan" in trusted and claims.get("plan") is not None:
        plan = claims["plan"]
        if not isinstance(plan, str) or not plan:
            raise TokenError(INVALID, "claim plan is not a plan name")
    return AccessToken(identity, jti, expires_at, kid, rules, plan)


class TokenVerifier:
    """Verifies a token against the configured keys and claims (one per broker)."""

    def __init__(self, config: JwtConfig, keys: KeySource) -> None:
        self.config = config
        self.keys = keys
        self._algorithms = tuple(config.algorithms)

    async def verify(self, token: str, *, now: float | None = None) -> AccessToken:
        """The token's grant; raises TokenError with the reason it is refused."""
        config = self.config
        alg, kid = read_header(token, self._algorithms)
        candidates = [key for key in await self.keys.candidates(kid, key_type(alg)) if key_fits(key, alg)]
        if not candidates:
            raise TokenError(INVALID, f"no {alg} verification key with kid {kid!r}" if kid else f"no {alg} key")
        claims: dict[str, Any] | None = None
        for key in candidates:
            try:
                claims = jwt.decode(token, key, algorithms=[alg]).claims
                break
            except (BadSignatureError, *_KEY_ERRORS):  # this key does not verify it: try the next one
                continue
            except JoseError as exc:
                raise TokenError(MALFORMED, f"malformed token ({exc.error})") from None
            except (ValueError, TypeError):  # joserfc lets some malformed input through as these
                raise TokenError(MALFORMED, "malformed token") from None
        if claims is None:
            raise TokenError(INVALID, f"bad signature (kid {kid!r})" if kid else "bad signature")
        expires_at = check_claims(
            claims,
            now=time.time() if now is None else now,
            leeway=config.leeway,
            issuer=config.issuer,
            audience=config.audience,
        )
        return token_of(claims, kid, config, expires_at)
