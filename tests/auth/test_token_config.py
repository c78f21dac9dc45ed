"""auth.jwt and the websockets listener's token keys (issue 19, docs/tokens.md): the contract's keys load,
and each mistake stops the broker with a message naming the key."""

from __future__ import annotations

import pytest

from mqtt_guard.config import ConfigError, load_config


def test_access_token_keys(tmp_path):
    """auth.jwt and the websockets listener's token keys (docs/tokens.md): the issue's contract, verbatim."""
    f = tmp_path / "c.yaml"
    f.write_text(
        "auth:\n  jwt:\n    secret: " + "k" * 64 + "\n    algorithms: [HS256, HS512]\n    audience: mqtt\n"
        "    issuer: https://issuer.example\n    username_claim: sub\n    leeway: 30s\n"
        "    trusted_claims: [acl, plan]\n"
        "listeners:\n  - type: websockets\n    bind: 127.0.0.1:8080\n    require_token: true\n"
        "    token_sources: [header, 'cookie:mqtt_token', 'query:token']\n"
        "    allowed_origins: ['https://app.example']\n"
    )
    config = load_config(f)
    config.check()
    jwt = config.auth.jwt
    assert jwt is not None and jwt.leeway == 30 and jwt.trusted_claims == ["acl", "plan"]
    assert config.listeners[0].token_sources == ["header", "cookie:mqtt_token", "query:token"]
    assert load_config(None).auth.jwt is None and load_config(None).listeners == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("auth:\n  jwt:\n    algorithms: [HS256]\n", "exactly one of secret, public_key_file, jwks_url"),
        ("auth:\n  jwt:\n    secret: s\n    algorithms: [none]\n", "never accepted"),
        ("auth:\n  jwt:\n    secret: s\n    algorithms: [PS256]\n", "unknown algorithm"),
        ("auth:\n  jwt:\n    jwks_url: https://i/jwks\n    algorithms: [HS256]\n", "need a secret"),
        (
            "auth:\n  jwt:\n    jwks_url: ftp://i/jwks\n    algorithms: [RS256]\n",
            "auth.jwt.jwks_url: must be an https:// URL",
        ),
        (
            "auth:\n  jwt:\n    jwks_url: http://issuer.example/jwks\n    algorithms: [RS256]\n",
            "auth.jwt.jwks_url: plain http:// is accepted only to a loopback address",
        ),
        (
            "auth:\n  jwt:\n    jwks_url: http://10.0.0.5/jwks\n    algorithms: [RS256]\n",
            "auth.jwt.jwks_url: plain http:// is accepted only to a loopback address",
        ),
        (
            "auth:\n  jwt:\n    secret: kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk\n",
            "auth.jwt.secret: 31 bytes is too short for HS256: it needs 32 bytes",
        ),
        (
            "auth:\n  jwt:\n    secret: kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk\n    algorithms: [HS256, HS384]\n",
            "auth.jwt.secret: 40 bytes is too short for HS384: it needs 48 bytes",
        ),
        (
            "auth:\n  jwt:\n    secret: " + "k" * 63 + "\n    algorithms: [HS512]\n",
            "auth.jwt.secret: 63 bytes is too short for HS512: it needs 64 bytes",
        ),
        ("auth:\n  jwt:\n    public_key_file: /nonexistent.pem\n    algorithms: [RS256]\n", "file not found"),
        ("auth:\n  jwt:\n    secret: s\n    trusted_claims: [groups]\n", "trusted_claims[0]"),
        ("auth:\n  jwt:\n    secret: s\n    leeway: soon\n", "auth.jwt.leeway"),
        ("auth:\n  jwt:\n    secret: s\n    audiense: x\n", "unknown key 'auth.jwt.audiense'"),
        (
            "listeners:\n  - type: websockets\n    bind: 127.0.0.1:1\n    require_token: true\n",
            "require_token needs auth.jwt",
        ),
        ("listeners:\n  - type: tcp\n    bind: 127.0.0.1:1\n    allowed_origins: [x]\n", "websockets listeners only"),
        ("listeners:\n  - type: websockets\n    bind: 127.0.0.1:1\n    token_sources: [body]\n", "token_sources[0]"),
        ("listeners:\n  - type: websockets\n    bind: 127.0.0.1:1\n    token_sources: ['cookie:']\n", "cookie:NAME"),
        ("listeners:\n  - type: websockets\n    bind: 127.0.0.1:1\n    token_sources: []\n", "at least one place"),
    ],
)
def test_access_token_errors(tmp_path, text, expected):
    f = tmp_path / "c.yaml"
    f.write_text(text if "listeners" in text else text + "listeners:\n  - bind: 127.0.0.1:1884\n")
    with pytest.raises(ConfigError) as info:
        load_config(f).check()
    assert expected in str(info.value)


@pytest.mark.parametrize(
    ("jwt", "algorithms"),
    [
        ("secret: " + "k" * 32, "[HS256]"),  # RFC 7518 3.2: exactly the hash size is enough
        ("secret: " + "k" * 48, "[HS256, HS384]"),
        ("secret: " + "k" * 64, "[HS512]"),
        ("jwks_url: http://127.0.0.1:8000/jwks.json", "[RS256]"),  # a local issuer or proxy
        ("jwks_url: 'http://[::1]:8000/jwks.json'", "[RS256]"),
        ("jwks_url: http://localhost/jwks.json", "[RS256]"),
        ("jwks_url: https://issuer.example/jwks.json", "[RS256]"),
    ],
)
def test_secrets_of_the_hash_size_and_loopback_http_jwks_are_accepted(tmp_path, jwt, algorithms):
    f = tmp_path / "c.yaml"
    f.write_text(f"auth:\n  jwt:\n    {jwt}\n    algorithms: {algorithms}\nlisteners:\n  - bind: 127.0.0.1:1884\n")
    load_config(f).check()
