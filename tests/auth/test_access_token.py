"""Access tokens without a broker (issue 19 items 1 and 7): each refusal reason of the pure checks, each
algorithm verified, `alg: none` and algorithm confusion refused, key sources (a key file, a JWKS over real
HTTP that rotates, does not parse, or goes away)."""

from __future__ import annotations

import asyncio
import time

import pytest

from mqtt_guard.acl.policy import AclPolicy, Subject
from mqtt_guard.acl.rules import Perm
from mqtt_guard.auth.access_token import (
    EXPIRED,
    INVALID,
    MALFORMED,
    TokenError,
    TokenVerifier,
    acl_rules,
    check_claims,
    looks_like_jwt,
    read_header,
)
from mqtt_guard.auth.jwks import JwksKeys, KeysError, StaticKeys, load_key_file, parse_jwks
from mqtt_guard.config import ConfigError, JwtConfig
from tests.helpers import tokens as T

pytestmark = pytest.mark.filterwarnings("ignore:EdDSA is deprecated")  # RFC 9864's new name; issuers send EdDSA


def _verify(config: JwtConfig, token: str, keys: object = None) -> object:
    source = keys if keys is not None else StaticKeys.from_config(config)
    return asyncio.run(TokenVerifier(config, source).verify(token))  # type: ignore[arg-type]


def _refused(config: JwtConfig, token: str, keys: object = None) -> TokenError:
    with pytest.raises(TokenError) as info:
        _verify(config, token, keys)
    return info.value


# -- pure parts -------------------------------------------------------------------------------------
def test_a_password_is_taken_for_a_token_only_when_it_looks_like_one():
    assert looks_like_jwt(T.hs_token(T.claims()))
    assert not looks_like_jwt("correct horse battery staple")
    assert not looks_like_jwt("eyJ.only-two")


@pytest.mark.parametrize(
    ("token", "kind", "words"),
    [
        ("a.b", MALFORMED, "three base64url parts"),
        ("!!!.e30.sig", MALFORMED, "header is not base64url-encoded JSON"),
        (T.b64(b"[1]") + ".e30.x", MALFORMED, "header is not a JSON object"),
        (T.b64(b"{}") + ".e30.x", MALFORMED, "names no algorithm"),
        (T.b64(b'{"alg":"none"}') + ".e30.", INVALID, "alg: none"),
        (T.b64(b'{"alg":"NONE"}') + ".e30.", INVALID, "alg: none"),
        (T.b64(b'{"alg":"HS257"}') + ".e30.x", INVALID, "algorithm 'HS257' is not accepted"),
        (T.b64(b'{"alg":"RS256"}') + ".e30.x", INVALID, "algorithm 'RS256' is not accepted"),
        (T.b64(b'{"alg":"HS256","crit":["x"]}') + ".e30.x", INVALID, "crit"),
    ],
)
def test_the_header_is_refused_before_any_key_is_looked_at(token, kind, words):
    with pytest.raises(TokenError) as info:
        read_header(token, ["HS256"])
    assert info.value.kind == kind and words in info.value.detail


def test_claims_time_window_issuer_and_audience_with_leeway():
    now = 1_000_000.0
    ok = {"exp": now + 10, "nbf": now - 10, "iss": "https://i", "aud": ["x", "mqtt"]}
    assert check_claims(ok, now=now, leeway=30, issuer="https://i", audience="mqtt") == now + 40
    assert check_claims({"exp": now - 20}, now=now, leeway=30, issuer=None, audience=None) == now + 10
    good = {"iss": "https://i", "aud": "mqtt"}
    cases = [
        ({"exp": now - 31}, EXPIRED, "expired"),
        ({"nbf": now + 31}, INVALID, "not valid for another"),
        ({"exp": "soon"}, INVALID, "exp is not a number"),
        ({"exp": True}, INVALID, "exp is not a number"),
        ({"iss": "https://other"}, INVALID, "issuer"),
        ({"iss": None}, INVALID, "issuer"),
        ({"aud": "web"}, INVALID, "audience"),
        ({"aud": None}, INVALID, "audience"),
    ]
    for changed, kind, words in cases:
        with pytest.raises(TokenError) as info:
            check_claims({**good, **changed}, now=now, leeway=30, issuer="https://i", audience="mqtt")
        assert info.value.kind == kind and words in info.value.detail, changed


def test_the_acl_claim_becomes_rules_of_our_model_and_a_malformed_one_refuses_the_token():
    rules = acl_rules(
        [
            {"permission": "allow", "action": "publish", "topic": "up/alice/#"},
            {"permission": "allow", "action": "subscribe", "topic": "down/#"},
            {"permission": "deny", "action": "receive", "topic": "down/secret"},
            {"permission": "allow", "action": "all", "topic": "rw/+"},
        ]
    )
    policy = AclPolicy()
    subject = Subject("alice", "c1", rules=rules)
    assert policy.allowed(subject, Perm.PUBLISH, "up/alice/x")
    assert not policy.allowed(subject, Perm.PUBLISH, "up/bob/x")
    assert policy.allowed(subject, Perm.SUBSCRIBE, "down/#")
    assert policy.allowed(subject, Perm.RECEIVE, "down/news")  # EMQX's subscribe: what it subscribed to arrives
    assert not policy.allowed(subject, Perm.RECEIVE, "down/secret")
    assert policy.allowed(subject, Perm.PUBLISH, "rw/a") and policy.allowed(subject, Perm.RECEIVE, "rw/a")
    assert not policy.allowed(Subject("alice", "c1"), Perm.PUBLISH, "up/alice/x")  # the rules are the token's
    for bad, words in [
        ({"permission": "allow", "action": "publish"}, "exactly permission, action and topic"),
        ({"permission": "allow", "action": "publish", "topic": "a", "qos": [1]}, "exactly"),
        ({"permission": "maybe", "action": "publish", "topic": "a"}, "permission allow|deny"),
        ({"permission": "allow", "action": "read", "topic": "a"}, "action publish|subscribe|receive|all"),
        ({"permission": "allow", "action": "publish", "topic": "a/#/b"}, "topic filter"),
    ]:
        with pytest.raises(TokenError, match="claim acl") as info:
            acl_rules([bad])
        assert words in info.value.detail
    with pytest.raises(TokenError, match="not a list"):
        acl_rules({"publish": "#"})


# -- verification -------------------------------------------------------------------------------------
def test_hs_tokens_verify_and_each_refusal_has_its_reason():
    config = JwtConfig(secret=T.SECRET, algorithms=["HS256", "HS384", "HS512"], audience="mqtt", leeway=5)
    for alg in ("HS256", "HS384", "HS512"):
        token = _verify(config, T.hs_token(T.claims(aud="mqtt", jti="j1"), alg=alg))
        assert token.identity == "alice" and token.jti == "j1"  # type: ignore[attr-defined]
    assert "bad signature" in _refused(config, T.hs_token(T.claims(aud="mqtt"), secret="x" * 32)).detail
    assert _refused(config, T.hs_token(T.claims(aud="mqtt", ttl=-60))).kind == EXPIRED
    assert "audience" in _refused(config, T.hs_token(T.claims(aud="web"))).detail
    assert "no sub claim" in _refused(config, T.hs_token({"aud": "mqtt", "exp": time.time() + 60})).detail
    assert "alg: none" in _refused(config, T.unsigned(T.claims(aud="mqtt"))).detail
    tampered = T.hs_token(T.claims(aud="mqtt")).rsplit(".", 1)[0] + "." + T.b64(b"x" * 32)
    assert "bad signature" in _refused(config, tampered).detail
    garbage = T.hs_token(T.claims(aud="mqtt")).split(".")
    assert _refused(config, f"{garbage[0]}.!!!.{garbage[2]}").kind in (MALFORMED, INVALID)


@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA"])
def test_public_key_algorithms_verify_from_a_key_file(alg, tmp_path):
    key = T.new_key(alg, "k1")
    path = tmp_path / "key.pem"
    path.write_bytes(T.public_pem(key))
    config = JwtConfig(public_key_file=str(path), algorithms=[alg])
    config.check()
    assert _verify(config, T.sign(T.claims("bob"), key, alg)).identity == "bob"  # type: ignore[attr-defined]
    other = T.new_key(alg, "k1")
    assert "bad signature" in _refused(config, T.sign(T.claims("bob"), other, alg)).detail


def test_algorithm_confusion_is_refused(tmp_path):
    """An RS256 issuer's public key used as an HS256 secret: the configuration refuses HS* without a
    secret, and even a verifier told to accept both finds no HMAC key among RSA keys."""
    key = T.new_key("RS256", "k1")
    path = tmp_path / "key.pem"
    path.write_bytes(T.public_pem(key))
    with pytest.raises(ConfigError, match="need a secret"):
        JwtConfig(public_key_file=str(path), algorithms=["RS256", "HS256"]).check()
    config = JwtConfig(public_key_file=str(path), algorithms=["RS256", "HS256"])  # what check() refuses
    forged = T.forged_hs_with_public_key(T.claims(), key)
    assert "no HS256 key" in _refused(config, forged).detail


def test_configuration_refuses_none_unknown_algorithms_and_ambiguous_keys():
    with pytest.raises(ConfigError, match="never accepted"):
        JwtConfig(secret="s", algorithms=["none"]).check()
    with pytest.raises(ConfigError, match="unknown algorithm"):
        JwtConfig(secret="s", algorithms=["HS1024"]).check()
    with pytest.raises(ConfigError, match="exactly one of"):
        JwtConfig(secret="s", jwks_url="https://x/jwks").check()
    with pytest.raises(ConfigError, match="exactly one of"):
        JwtConfig().check()
    with pytest.raises(ConfigError, match="a secret verifies"):
        JwtConfig(secret="s", algorithms=["RS256"]).check()
    with pytest.raises(ConfigError, match="trusted_claims"):
        JwtConfig(secret=T.SECRET, trusted_claims=["superuser"]).check()


def test_a_jwks_that_does_not_parse_is_named_clearly():
    for body, words in [
        (b"<html>", "not JSON"),
        (b'{"kid": "x"}', "not a JWK set"),
        (b'{"keys": [{"kty": "RSA", "kid": "k", "n": "!!", "e": "AQAB"}]}', "no usable signature key"),
        (b'{"keys": []}', "no usable signature key"),
    ]:
        with pytest.raises(KeysError, match=words):
            parse_jwks(body)


def test_a_key_file_may_be_a_jwk_or_a_jwk_set(tmp_path):
    key = T.new_key("ES256", "e1")
    path = tmp_path / "key.json"
    path.write_text(__import__("json").dumps(key.as_dict(private=False)))
    assert [k.kid for k in load_key_file(str(path))] == ["e1"]


def test_jwks_rotation_unknown_kid_refresh_rate_limit_and_outage():
    server = T.JwksServer().start()
    old, new = T.new_key("RS256", "old"), T.new_key("RS256", "new")
    server.publish(old)
    config = JwtConfig(jwks_url=server.url, algorithms=["RS256"], jwks_min_refresh=0.5)

    async def scenario() -> None:
        keys = JwksKeys(server.url, refresh=3600, min_refresh=0.5)
        await keys.start()
        try:
            verifier = TokenVerifier(config, keys)
            assert (await verifier.verify(T.sign(T.claims(), old, "RS256"))).kid == "old"
            fetched = server.requests
            server.publish(old, new)  # rotation: a new key appears; the first token naming it fetches it
            await asyncio.sleep(0.5)
            assert (await verifier.verify(T.sign(T.claims(), new, "RS256"))).kid == "new"
            assert server.requests == fetched + 1
            # made-up kids: one fetch per min_refresh, however many tokens (concurrent ones share it)
            stranger = T.new_key("RS256", "nobody")
            await asyncio.sleep(0.5)
            before = server.requests
            results = await asyncio.gather(
                *(verifier.verify(T.sign(T.claims(), stranger, "RS256")) for _ in range(20)), return_exceptions=True
            )
            assert all(isinstance(r, TokenError) and "kid 'nobody'" in r.detail for r in results)
            assert server.requests == before + 1
            # an outage or a broken set keeps the last good keys
            server.body = b"not json"
            await keys.refresh()
            server.status = 500
            await keys.refresh()
            assert (await verifier.verify(T.sign(T.claims(), new, "RS256"))).kid == "new"
            # the issuer drops the old key: once fetched, its tokens are refused
            server.status = 200
            server.publish(new)
            await keys.refresh()
            with pytest.raises(TokenError, match="kid 'old'"):
                await verifier.verify(T.sign(T.claims(), old, "RS256"))
        finally:
            await keys.close()

    try:
        asyncio.run(scenario())
    finally:
        server.stop()


def test_a_jwks_that_was_down_at_start_is_fetched_when_a_token_comes():
    server = T.JwksServer().start()
    server.status = 503
    key = T.new_key("ES256", "e1")
    config = JwtConfig(jwks_url=server.url, algorithms=["ES256"])

    async def scenario() -> None:
        keys = JwksKeys(server.url, refresh=3600, min_refresh=0)
        await keys.start()  # the issuer is down: no keys, and the broker starts anyway
        try:
            assert keys.keys == []
            server.status = 200
            server.publish(key)
            token = T.sign(T.claims(), key, "ES256", kid=False)  # no kid: any ES256 key of the set
            assert (await TokenVerifier(config, keys).verify(token)).identity == "alice"
        finally:
            await keys.close()

    try:
        asyncio.run(scenario())
    finally:
        server.stop()


def test_the_plan_claim_is_honoured_only_when_trusted():
    """A plan claim grants limits, so it counts only from an issuer listed for it (trusted_claims)."""
    trusting = JwtConfig(secret=T.SECRET, trusted_claims=["plan"])
    wary = JwtConfig(secret=T.SECRET)
    token = T.hs_token(T.claims(plan="gold"))
    assert _verify(trusting, token).plan == "gold"  # type: ignore[attr-defined]
    assert _verify(wary, token).plan is None  # type: ignore[attr-defined]
    assert "claim plan" in _refused(trusting, T.hs_token(T.claims(plan=["gold"]))).detail


@pytest.mark.parametrize("order", ["other_first", "right_first"])
def test_a_jwks_key_for_another_algorithm_or_curve_does_not_stop_the_search(order):
    """Review of issue 19: a JWK naming another `alg` (or an EC key of another curve) listed before the
    right key refused a token without `kid` as malformed; keys that cannot serve the token's algorithm
    are skipped, whatever their order in the set."""
    from joserfc.jwk import ECKey, RSAKey

    right = RSAKey.generate_key(2048, parameters={"alg": "RS256"})
    other = RSAKey.generate_key(2048, parameters={"alg": "RS384"})
    wrong_curve = ECKey.generate_key("P-384")
    good_ec = ECKey.generate_key("P-256")
    pair = [other, right] if order == "other_first" else [right, other]
    ecs = [wrong_curve, good_ec] if order == "other_first" else [good_ec, wrong_curve]
    doc = __import__("json").dumps({"keys": [k.as_dict(private=False) for k in [*pair, *ecs]]})
    keys = StaticKeys(parse_jwks(doc))
    config = JwtConfig(jwks_url="https://issuer.example/jwks", algorithms=["RS256", "ES256"])
    assert _verify(config, T.sign(T.claims("rs"), right, "RS256", kid=False), keys).identity == "rs"  # type: ignore[attr-defined]
    assert _verify(config, T.sign(T.claims("ec"), good_ec, "ES256", kid=False), keys).identity == "ec"  # type: ignore[attr-defined]
    # a token signed by a key that is not in the set is still refused, as a bad signature
    stranger = RSAKey.generate_key(2048, parameters={"alg": "RS256"})
    assert "bad signature" in _refused(config, T.sign(T.claims(), stranger, "RS256", kid=False), keys).detail
    # only keys for another algorithm: no key at all for this one
    only_other = StaticKeys(parse_jwks(__import__("json").dumps({"keys": [other.as_dict(private=False)]})))
    assert "no RS256 key" in _refused(config, T.sign(T.claims(), right, "RS256", kid=False), only_other).detail


def test_a_jwks_answer_larger_than_the_cap_is_refused_and_the_last_keys_stay(caplog):
    """Review of issue 19: the JWKS body is read up to MAX_JWKS_BYTES (1 MiB); a larger answer (announced
    or streamed) is an error that is logged and keeps the keys fetched before."""
    from mqtt_guard.auth.jwks import MAX_JWKS_BYTES

    server = T.JwksServer().start()
    key = T.new_key("RS256", "k1")
    server.publish(key)
    config = JwtConfig(jwks_url=server.url, algorithms=["RS256"])

    async def scenario() -> None:
        keys = JwksKeys(server.url, refresh=3600, min_refresh=0)
        await keys.start()
        try:
            good = server.body
            server.body = good[:-1] + b" " * MAX_JWKS_BYTES + b"}"  # still a valid JWKS, just too large
            with caplog.at_level("ERROR", logger="mqtt_guard.auth.jwks"):
                await keys.refresh()
            assert "larger than the 1048576 bytes allowed" in caplog.text and "keeping the 1 keys" in caplog.text
            assert (await TokenVerifier(config, keys).verify(T.sign(T.claims(), key, "RS256"))).kid == "k1"
            server.body = good  # at the cap or under it: read as before
            await keys.refresh()
            assert [k.kid for k in keys.keys] == ["k1"]
        finally:
            await keys.close()

    try:
        asyncio.run(scenario())
    finally:
        server.stop()
