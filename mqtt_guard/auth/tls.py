"""The client identity a TLS listener vouches for: the subject CN of a verified client certificate."""

from __future__ import annotations

import ssl

from cryptography import x509
from cryptography.x509.oid import NameOID


def certificate_identity(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> str | None:
    """CN of the peer certificate, or None when there is no (verified) certificate.

    The certificate is only offered by the TLS layer after the chain was verified against the
    listener's cafile (require_certificate sets CERT_REQUIRED), so its CN can be trusted.
    """
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        return None
    cert = x509.load_der_x509_certificate(der)
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not names:
        return None
    value = names[0].value
    return value if isinstance(value, str) and value else None
