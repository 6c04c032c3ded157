"""Choosing a TLS certificate by the server name a client asked for (SNI, RFC 6066 §3)."""

from __future__ import annotations

from collections.abc import Sequence


class SniTable:
    """Which certificate answers a TLS ClientHello's server name (SNI): exact names first, then
    one-label wildcards (`*.example.org`); None: the default (first) certificate."""

    __slots__ = ("_exact", "_wildcard")

    def __init__(self, names: Sequence[Sequence[str]]) -> None:
        self._exact: dict[str, int] = {}
        self._wildcard: dict[str, int] = {}
        for index, cert_names in enumerate(names):
            for name in cert_names:
                name = name.lower().rstrip(".")
                if name.startswith("*."):
                    self._wildcard.setdefault(name[2:], index)
                else:
                    self._exact.setdefault(name, index)

    def choose(self, server_name: str | None) -> int | None:
        if not server_name:
            return None
        name = server_name.lower().rstrip(".")
        found = self._exact.get(name)
        return found if found is not None else self._wildcard.get(name.partition(".")[2])
