"""A throw-away CA with server and client certificates, made with `cryptography` for TLS tests."""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclass
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    dir: Path

    def client(self, cn: str, *, signed_by_ca: bool = True) -> tuple[Path, Path]:
        return _issue(self.dir, cn, self if signed_by_ca else None, server=False)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(dir_: Path, stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> tuple[Path, Path]:
    cert_path, key_path = dir_ / f"{stem}.crt", dir_ / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


_CA_KEYS: dict[Path, ec.EllipticCurvePrivateKey] = {}


def _issue(dir_: Path, cn: str, pki: Pki | None, *, server: bool) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    if pki is not None:
        issuer_key = _CA_KEYS[pki.ca]
        issuer = x509.load_pem_x509_certificate(pki.ca.read_bytes()).subject
    else:  # self-signed: an unknown issuer the broker must reject
        issuer_key, issuer = key, _name(cn)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
    cert = builder.sign(issuer_key, hashes.SHA256())
    return _write(dir_, f"{'server' if server else 'client'}-{cn}", cert, key)


def make_pki(dir_: Path) -> Pki:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("mqtt-guard test CA"))
        .issuer_name(_name("mqtt-guard test CA"))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    ca_path, _ = _write(dir_, "ca", cert, key)
    _CA_KEYS[ca_path] = key
    pki = Pki(ca_path, Path(), Path(), dir_)
    pki.server_cert, pki.server_key = _issue(dir_, "localhost", pki, server=True)
    return pki
