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

from pacslb.core import tproxy
from pacslb.engines.host import Host
from pacslb.engines.nftables import Nft
from pacslb.errors import EngineError


class TproxyRules:
    def __init__(self, nft: Callable[[], Nft], host: Host) -> None:
        self._nft = nft  # called when first needed: a config without them needs no nftables
        self.host = host
        self.applied: frozenset[int] | None = None  # None: not looked at yet

    def apply(self, wanted: frozenset[int]) -> list[str]:
        """Make the host hold exactly the return path for the IP versions `wanted`; what was
        done, in words (empty when nothing changed)."""
        done: list[str] = []
        kept: frozenset[int] = frozenset()  # versions whose policy rule an earlier run left
        if self.applied is None:
            # First look. What an earlier run left is either taken over as it is or removed:
            # never removed and then made again, since a control process restarted under a
            # kept data plane (`stop --keep-data-plane`) has transparent connections open,
            # and a reply that met no rule in between would be forwarded to the client,
            # whose RST then cuts the server's side (a DICOM transfer lost).
            left = self._left_behind()
            if wanted:
                kept = left & wanted
                for version in sorted(left - wanted):
                    for step in (tproxy.rule_step(version), tproxy.route_step(version)):
                        self._remove(step)
            elif left:
                self._clean()
                done.append("removed the transparent-mode rules an earlier run left")
            self.applied = frozenset()
        if wanted == self.applied:
            return done
        undo: list[Callable[[], None]] = []
        try:
            if wanted and not self.applied:
                # One transaction (declare, delete, create): a table already there is
                # replaced without a moment in which replies go unmarked.
                self._nft().run(tproxy.nft_script(True))
                undo.append(self._drop_table)
                done.append(f"added nftables table inet {tproxy.TABLE} (transparent replies)")
            for version in sorted(wanted - self.applied):
                # `route replace` is atomic; the rule is left as it is when it is ours already.
                for step in (tproxy.route_step(version), tproxy.rule_step(version)):
                    if step.add[1] == "rule":
                        if version in kept:
                            continue
                        self._remove(step)  # a leftover of another shape: not doubled
                    self.host.ip(*step.add)
                    undo.append(functools.partial(self._remove, step))
                    done.append(step.what)
        except EngineError as exc:
            for action in reversed(undo):
                with contextlib.suppress(EngineError):
                    action()
            raise EngineError(f"transparent mode (source: client): {exc}") from exc
        for version in sorted(self.applied - wanted):
            for step in (tproxy.rule_step(version), tproxy.route_step(version)):
                self._remove(step)
            done.append(f"removed the IPv{version} policy rule and route of transparent mode")
        if not wanted and self.applied:
            self._drop_table()
            done.append(f"deleted nftables table inet {tproxy.TABLE}")
        self.applied = wanted
        return done

    def remove(self) -> list[str]:
        """Take everything away (`pacslb teardown`)."""
        self._clean()
        self.applied = frozenset()
        return [f"removed transparent mode's policy rules, routes and table {tproxy.TABLE}"]

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
