"""TLS for the l7-http proxy: termination on the VIP (with SNI) and re-encryption upstream."""

from __future__ import annotations

import functools
import ssl
from collections.abc import Sequence
from typing import Any

from pacslb.core.sni import SniTable


@functools.cache
def upstream_tls() -> ssl.SSLContext:
    # Re-encryption to real servers: internal servers carry self-signed or private-CA
    # certificates, so the certificate is NOT verified (like HAProxy `ssl verify none`). The
    # point is an encrypted hop on the server network, not server authentication.
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def tls_context(certificates: Sequence[tuple[str, str | None]]) -> ssl.SSLContext:
    """A server context for TLS termination: the first certificate is the default, the others
    are chosen by SNI against their names (subjectAltName DNS entries, else the CN)."""
    if not certificates:
        raise ValueError("TLS termination needs at least one certificate")
    contexts = []
    for cert, key in certificates:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(cert, key)
        ctx.set_alpn_protocols(["http/1.1"])
        contexts.append(ctx)
    if len(contexts) > 1:
        table = SniTable([_cert_names(cert) for cert, _ in certificates])

        def choose(sock: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext) -> None:
            index = table.choose(server_name)
            if index:  # each certificate has its own context; 0 is the default already
                sock.context = contexts[index]

        contexts[0].sni_callback = choose
    return contexts[0]


def _cert_names(path: str) -> list[str]:
    # CPython's own PEM decoder (the one ssl uses for getpeercert()): no extra dependency.
    decode = getattr(getattr(ssl, "_ssl"), "_test_decode_cert")  # noqa: B009
    info: dict[str, Any] = decode(path)
    dns = [value for kind, value in info.get("subjectAltName", ()) if kind == "DNS"]
    return dns or [v for rdn in info.get("subject", ()) for k, v in rdn if k == "commonName"]
