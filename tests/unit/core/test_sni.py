"""pacslb.core.sni: choosing a certificate by server name."""

from __future__ import annotations

from pacslb.core.sni import (
    SniTable,
)


def test_sni_table() -> None:
    table = SniTable([["pacs.example.org"], ["*.example.org", "viewer.example.net"], ["Other."]])
    assert table.choose("pacs.example.org") == 0
    assert table.choose("ris.example.org") == 1 and table.choose("VIEWER.example.net.") == 1
    assert table.choose("other") == 2
    assert table.choose("a.b.example.org") is None  # a wildcard is one label
    assert table.choose(None) is None and table.choose("unknown.test") is None
