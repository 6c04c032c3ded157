"""Self-signed certificates for the WebUI (and the demo's HTTPS real servers), as PEM bytes.

Pure: the caller passes the time and writes the files (the key with mode 0600)."""

from __future__ import annotations

import datetime
import ipaddress

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def self_signed(
    common_name: str,
    now: datetime.datetime,
    names: list[str] | None = None,
    addresses: list[str] | None = None,
    days: int = 825,
) -> tuple[bytes, bytes]:
    """(certificate PEM, private key PEM): P-256, SHA-256, valid from a day before `now`.

    825 days is the longest lifetime browsers accept for a TLS server certificate."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in names or []]
    sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in addresses or []]
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=days))
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(key, hashes.SHA256())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem
