"""Puts on the host, and takes away, what transparent l7 services need (core/tproxy.py):
the nftables marking table and, per IP version, the policy rule and the local route.

Owned by the kernel engine (it owns pacslb's other nftables tables and host addresses) and
applied before the proxy gets the Plan, so the first transparent connection finds its return
path. Idempotent: applied again with the same versions it does nothing; a change is made whole
or not at all (what a failed step had done already is undone, then EngineError). With no
transparent service nothing is touched, so a layer 7 config still runs without root, unless an
earlier run left our rules behind: those are found once and removed.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from pathlib import Path

from pacslb.core import tproxy
from pacslb.engines.host import Host
from pacslb.engines.nftables import Nft
from pacslb.errors import EngineError


class TproxyRules:
    def __init__(self, nft: Callable[[], Nft], host: Host) -> None:
        self._nft = nft  # called when first needed: a config without them needs no nftables
        self.host = host
        self.applied: frozenset[int] | None = None  # None: not looked at yet
        # versions no longer wanted whose return path stays until their connections end
        # (apply() again to look: the kernel engine does while this is not empty)
        self.lingering: frozenset[int] = frozenset()
        self.proc_net = Path("/proc/net")

    def apply(self, wanted: frozenset[int]) -> list[str]:
        """Make the host hold exactly the return path for the IP versions `wanted` (and for
        versions whose transparent connections are still open: `lingering`); what was done,
        in words (empty when nothing changed)."""
        done: list[str] = []
        try:
            if self.applied is None:
                self.applied = self._take_over(wanted, done)
            if wanted - self.applied:
                if not self.applied:
                    # One transaction (declare, delete, create): a table already there is
                    # replaced without a moment in which replies go unmarked.
                    self._nft().run(tproxy.nft_script(True))
                    done.append(f"added nftables table inet {tproxy.TABLE} (transparent replies)")
                self._add(wanted - self.applied, done)
        except EngineError as exc:
            raise EngineError(
                f"transparent mode (source: client): {exc} (needs root, and a kernel with "
                "nftables' socket expression: `pacslb doctor` checks both)"
            ) from exc
        kept_open: set[int] = set()
        for version in sorted(self.applied - wanted):
            # A removed service's (or a service's that left source: client) connections
            # finish (proxy/server.py): their replies still need the return path.
            still = self._open(version)
            if still:
                kept_open.add(version)
                if version not in self.lingering:
                    done.append(
                        f"kept the IPv{version} return path of transparent mode while {still} "
                        "transparent connection(s) finish"
                    )
                continue
            for step in (tproxy.rule_step(version), tproxy.route_step(version)):
                self._remove(step)
            done.append(f"removed the IPv{version} policy rule and route of transparent mode")
        if not wanted and self.applied and not kept_open:
            with contextlib.suppress(EngineError):  # absent (or no root to ask): fine
                self._drop_table()
            done.append(f"deleted nftables table inet {tproxy.TABLE}")
        self.lingering = frozenset(kept_open)
        self.applied = wanted | self.lingering
        return done

    def _take_over(self, wanted: frozenset[int], done: list[str]) -> frozenset[int]:
        """At the first look: what an earlier run left is taken over as it is, never removed
        and made again, since a control process restarted under a kept data plane (`stop
        --keep-data-plane`) has transparent connections open, and a reply that met no rule in
        between would be forwarded to the client, whose RST then cuts the server's side (a
        DICOM transfer lost). What is not wanted any more then goes the usual way (below)."""
        left = self._left_behind()
        if not left:
            return frozenset()
        if wanted:  # atomic: made sure of, not removed first
            self._nft().run(tproxy.nft_script(True))
        for version in sorted(left & wanted):
            self.host.ip(*tproxy.route_step(version).add)  # `route replace`: atomic
        versions = "/".join(map(str, sorted(left)))
        done.append(f"took over the IPv{versions} transparent-mode rules an earlier run left")
        return left

    def _add(self, versions: frozenset[int], done: list[str]) -> None:
        """The policy rule and local route of each version, all or none (what a failed step
        had done is undone; the table too when nothing else needs it)."""
        undo: list[Callable[[], None]] = []
        if not self.applied:
            undo.append(self._drop_table)
        try:
            for version in sorted(versions):
                for step in (tproxy.route_step(version), tproxy.rule_step(version)):
                    self._remove(step)  # a leftover of another shape: not doubled
                    self.host.ip(*step.add)
                    undo.append(functools.partial(self._remove, step))
                    done.append(step.what)
        except EngineError:
            for action in reversed(undo):
                with contextlib.suppress(EngineError):
                    action()
            raise

    def remove(self) -> list[str]:
        """Take everything away (`pacslb teardown`)."""
        self._clean()
        self.applied = frozenset()
        self.lingering = frozenset()
        return [f"removed transparent mode's policy rules, routes and table {tproxy.TABLE}"]

    def _open(self, version: int) -> int:
        """Open transparent connections of an IP version (sockets bound to an address that
        is not this host's), as /proc/net/tcp{,6} lists them; 0 when it cannot be read."""
        name = "tcp" if version == 4 else "tcp6"
        try:
            listing = (self.proc_net / name).read_text()
            local = self.host.addresses()
        except (OSError, EngineError):
            return 0
        return tproxy.foreign_sockets(listing, local)

    def _drop_table(self) -> None:
        self._nft().run(tproxy.nft_script(False))

    def _remove(self, step: tproxy.RoutingStep) -> None:
        with contextlib.suppress(EngineError):  # absent: fine
            self.host.ip(*step.remove)

    def _left_behind(self) -> frozenset[int]:
        """The IP versions whose policy rule is there (from an earlier run): cheap to ask, no
        root needed."""
        found = set()
        for version in (4, 6):
            with contextlib.suppress(EngineError):
                if tproxy.has_rule(self.host.ip(f"-{version}", "rule", "show")):
                    found.add(version)
        return frozenset(found)

    def _clean(self) -> None:
        """Remove whatever of ours is there (both versions, and the table)."""
        for version in (4, 6):
            for step in (tproxy.rule_step(version), tproxy.route_step(version)):
                self._remove(step)
        with contextlib.suppress(EngineError):  # no table, or no nftables: nothing to delete
            self._nft().run(tproxy.nft_script(False))
