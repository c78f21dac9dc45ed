"""JOSE libraries for access tokens (issue 19 item 1): `pyjwt` (with `cryptography`) against `joserfc`,
both on `cryptography`. Same process, same minute, interleaved rounds; median of rounds.

What is measured is what the broker does once per CONNECT carrying a token: verify the signature with
a key object prepared beforehand (keys are parsed once, when loaded or fetched) and decode the claims.
Each library is also checked for the two classic holes: a token with `alg: none`, and algorithm
confusion (an RS256 public key's PEM used as an HS256 secret); both must be refused.

    python tests/bench/bench_jose.py [--rounds 5] [--json out.json]

joserfc is the runtime dependency (it signs the tokens); pyjwt is not: install it somewhere and put it
on PYTHONPATH (`pip install --target /tmp/jose pyjwt==2.15.1; PYTHONPATH=/tmp/jose python ...`), else
joserfc is measured alone.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import statistics
import sys
import time
import timeit
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

try:
    import jwt as pyjwt
except ImportError:  # pragma: no cover - reported below
    pyjwt = None
try:
    from joserfc import jwk as jf_jwk
    from joserfc import jwt as jf_jwt
except ImportError:  # pragma: no cover - reported below
    jf_jwt = None

ALGS = ("HS256", "RS256", "ES256", "EdDSA")
CLAIMS = {"sub": "alice", "iss": "https://issuer.example", "aud": "mqtt", "jti": "j-1"}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def make_keys() -> dict[str, tuple[Any, Any]]:
    """alg -> (signing key, verifying key) as cryptography objects (bytes for HS256)."""
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    ed_key = ed25519.Ed25519PrivateKey.generate()
    secret = b"s" * 32
    return {
        "HS256": (secret, secret),
        "RS256": (rsa_key, rsa_key.public_key()),
        "ES256": (ec_key, ec_key.public_key()),
        "EdDSA": (ed_key, ed_key.public_key()),
    }


def pem(public_key: Any) -> bytes:
    return bytes(public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))


def sign_all(keys: dict[str, tuple[Any, Any]]) -> dict[str, str]:
    """Tokens signed by joserfc (the runtime dependency); both libraries verify the same ones."""
    assert jf_jwt is not None
    claims = dict(CLAIMS, exp=int(time.time()) + 3600)
    private = {
        "HS256": jf_jwk.OctKey.import_key(keys["HS256"][0]),
        "RS256": jf_jwk.RSAKey.import_key(_private_pem(keys["RS256"][0])),
        "ES256": jf_jwk.ECKey.import_key(_private_pem(keys["ES256"][0])),
        "EdDSA": jf_jwk.OKPKey.import_key(_private_pem(keys["EdDSA"][0])),
    }
    return {alg: jf_jwt.encode({"alg": alg}, claims, private[alg], algorithms=[alg]) for alg in ALGS}


def _private_pem(key: Any) -> bytes:
    return bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )


def pyjwt_verifiers(keys: dict[str, tuple[Any, Any]]) -> dict[str, Callable[[str], Any]]:
    assert pyjwt is not None
    out: dict[str, Callable[[str], Any]] = {}
    for alg in ALGS:
        key = keys[alg][1]
        out[alg] = lambda tok, key=key, alg=alg: pyjwt.decode(
            tok, key, algorithms=[alg], audience="mqtt", issuer="https://issuer.example", leeway=30
        )
    return out


def joserfc_verifiers(keys: dict[str, tuple[Any, Any]]) -> dict[str, Callable[[str], Any]]:
    assert jf_jwt is not None
    registry = jf_jwt.JWTClaimsRegistry(
        leeway=30, iss={"essential": True, "value": "https://issuer.example"}, aud={"value": "mqtt"}
    )
    imported = {
        "HS256": jf_jwk.OctKey.import_key(keys["HS256"][1]),
        "RS256": jf_jwk.RSAKey.import_key(pem(keys["RS256"][1])),
        "ES256": jf_jwk.ECKey.import_key(pem(keys["ES256"][1])),
        "EdDSA": jf_jwk.OKPKey.import_key(pem(keys["EdDSA"][1])),
    }
    out: dict[str, Callable[[str], Any]] = {}
    for alg in ALGS:
        key = imported[alg]

        def verify(tok: str, key: Any = key, alg: str = alg) -> Any:
            token = jf_jwt.decode(tok, key, algorithms=[alg])
            registry.validate(token.claims)
            return token.claims

        out[alg] = verify
    return out


def forged(keys: dict[str, tuple[Any, Any]]) -> dict[str, str]:
    """The two attacks: `alg: none`, and HS256 signed with the RS256 public key's PEM as the secret."""
    claims = _b64(json.dumps(dict(CLAIMS, exp=int(time.time()) + 3600)).encode())
    none = _b64(b'{"alg":"none","typ":"JWT"}') + "." + claims + "."
    header = _b64(b'{"alg":"HS256","typ":"JWT"}')
    signing_input = f"{header}.{claims}".encode()
    mac = hmac.new(pem(keys["RS256"][1]), signing_input, hashlib.sha256).digest()
    return {"none": none, "confusion": f"{header}.{claims}.{_b64(mac)}"}


def refusals(keys: dict[str, tuple[Any, Any]]) -> dict[str, dict[str, str]]:
    """Each attack against each library, with both algorithms allowed (the worst configuration): the RS256
    public key given as PEM bytes (a "secret"), and as a key object."""
    attacks = forged(keys)
    rsa_pem = pem(keys["RS256"][1])
    cases = [
        ("none", keys["HS256"][1]),
        ("confusion", rsa_pem),
        ("confusion_key_object", keys["RS256"][1]),
    ]
    both = ["HS256", "RS256"]
    result: dict[str, dict[str, str]] = {}
    libs: dict[str, Callable[[str, Any], Any]] = {}
    if pyjwt is not None:
        libs["pyjwt"] = lambda tok, key: pyjwt.decode(tok, key, algorithms=both, audience="mqtt")
    if jf_jwt is not None:

        def jf(tok: str, key: Any) -> Any:
            if isinstance(key, bytes):
                key = jf_jwk.OctKey.import_key(key)
            else:
                key = jf_jwk.RSAKey.import_key(pem(key))
            return jf_jwt.decode(tok, key, algorithms=both)

        libs["joserfc"] = jf
    for lib, decode in libs.items():
        r: dict[str, str] = {}
        for name, key in cases:
            attack = attacks["none" if name == "none" else "confusion"]
            try:
                decode(attack, key)
                r[name] = "ACCEPTED"
            except Exception as exc:  # any refusal counts; its kind is printed
                r[name] = f"refused ({type(exc).__name__})"
        result[lib] = r
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args()
    if jf_jwt is None:
        print("joserfc is not installed: it signs the tokens; nothing measured")
        return 0
    keys = make_keys()
    tokens = sign_all(keys)
    libs: dict[str, dict[str, Callable[[str], Any]]] = {"joserfc": joserfc_verifiers(keys)}
    if pyjwt is not None:
        libs["pyjwt"] = pyjwt_verifiers(keys)
    else:
        print("pyjwt is not importable (not a dependency: put it on PYTHONPATH): measuring joserfc alone")
    for verifiers in libs.values():
        for alg, verify in verifiers.items():
            assert verify(tokens[alg])["sub"] == "alice"
    samples: dict[str, dict[str, list[float]]] = {lib: {alg: [] for alg in ALGS} for lib in libs}
    for _ in range(args.rounds):
        for alg in ALGS:
            for lib, verifiers in libs.items():
                verify, token = verifiers[alg], tokens[alg]
                n = 2000 if alg in ("HS256", "RS256") else 500
                t = timeit.timeit(lambda verify=verify, token=token: verify(token), number=n)
                samples[lib][alg].append(t / n * 1e6)
    figures = {lib: {alg: round(statistics.median(v), 1) for alg, v in algs.items()} for lib, algs in samples.items()}
    print(f"{'us/token':10}" + "".join(f"{alg:>9}" for alg in ALGS))
    for lib, algs in figures.items():
        print(f"{lib:10}" + "".join(f"{algs[alg]:>9}" for alg in ALGS))
    checks = refusals(keys)
    for lib, r in checks.items():
        print(
            f"{lib}: alg none {r['none']}; RS256 public key as HS256 secret: PEM {r['confusion']},"
            f" key object {r['confusion_key_object']}"
        )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"us_per_token": figures, "refusals": checks}, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
