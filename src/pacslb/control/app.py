"""The control process (`pacslb run CONFIG`): config, health, admin state -> Plans -> engines.

It loads and validates the config (a config with any problem is never applied), records it as
a revision, probes every real server, and whenever health, admin state or the config changes it
builds a new Plan and hands it to every engine in the same loop turn. Operators and the CLI talk
to it over a local control socket (control/local.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pacslb import __version__
from pacslb import config as c
from pacslb.control import stop_intent
from pacslb.control.alerts import AlertService
from pacslb.control.checker import HealthChecker
from pacslb.control.events import Event, EventLog
from pacslb.control.ha import KeepalivedSupervisor
from pacslb.control.journal import SystemLog
from pacslb.control.pairing import Pairing
from pacslb.control.probes import ProbeResult
from pacslb.control.replica import Replicator
from pacslb.control.sdnotify import Notifier, status_line
from pacslb.control.startup import BrokenFile, unplaceable
from pacslb.control.status import status_json
from pacslb.control.store import (
    AdminStateStore,
    ConfigConflict,
    ConfigStore,
    HandEdited,
    Revision,
    StorageError,
    absolute_paths,
    file_exists,
    file_holds,
    line_ending,
    read_config,
    storage_error,
    write_atomic,
)
from pacslb.core.ha_role import HaState, Role, ha_enabled
from pacslb.core.health import Transition
from pacslb.core.plan import Leaving, Plan, ServerKey, build_plan, diff_plans, drained, removals
from pacslb.core.state import AdminState
from pacslb.core.validate import dump_text, load_data, load_text
from pacslb.core.yaml_edit import EditError, edit_text
from pacslb.engines.base import Counters, Engine
from pacslb.errors import ConfigError, EngineError, PacslbError


class UnknownTarget(PacslbError):
    """A command named a virtual service or real server the config does not have."""


# Seconds between looks at the connection counts of removed servers, and the least time after
# a removal before a count of 0 is believed: the engines' counters are read once a second
# (engines/proxy.py POLL_INTERVAL), so an older count may predate the Plan that stopped new
# connections to the server.
LEAVING_POLL = 1.0
LEAVING_SETTLE = 2.5
# Seconds between re-applies of the Plan while an engine's last apply failed: a cause fixed on
# the host (an interface brought up, nftables installed) ends "not ready" by itself.
ENGINE_RETRY = 5.0
# What an engine reports through its notify hook (data["reason"]) when part of it stopped serving
# the Plan in force on its own, between two applies: a proxy worker replaced after a crash or a
# hang that could not be started again, or did not take the last Plan. Not ready until an apply
# (retried every ENGINE_RETRY s) reaches every part again.
ENGINE_REPORTED_FAILURES = frozenset({"start-failed", "plan-failed"})


@dataclass(frozen=True, slots=True)
class EngineRecord:
    """The last Plan an engine took, and its last failure (for /metrics and the WebUI)."""

    applied_at: float | None = None  # unix time of the last successful apply
    error: str | None = None  # the last apply's error; None once an apply succeeds
    error_at: float | None = None


class CommitLock(asyncio.Lock):
    """One config change at a time, and none before `opened` is set (by start(), once the
    config the process was started with is saved and applied)."""

    def __init__(self) -> None:
        super().__init__()
        self.opened = asyncio.Event()

    async def acquire(self) -> Literal[True]:
        await self.opened.wait()
        return await super().acquire()


class ControlProcess:
    def __init__(
        self,
        config_path: Path,
        config: c.Config,
        text: str,
        engines: Sequence[Engine] = (),
        state_dir: Path | None = None,
        broken_file: BrokenFile | None = None,
        placement_problems: Sequence[str] = (),
    ) -> None:
        self.config_path = config_path
        self.config = config
        self.state_dir = state_dir or config.node.state_dir
        self.state_dir.mkdir(parents=True, exist_ok=True)
        stop_intent.forget(self.state_dir)  # an earlier stop's, read by ExecStopPost
        self.store = ConfigStore(self.state_dir)
        self.admin = AdminStateStore(self.state_dir / "admin-state.json")
        self.events = EventLog(
            self.state_dir / "events.jsonl", system_log=SystemLog.from_environment()
        )
        self.alerts = AlertService(lambda message, data: self._record("alert", message, data=data))
        self.events.observers.append(self.alerts.observe)
        self.notifier = Notifier()  # systemd's Type=notify ($NOTIFY_SOCKET); else does nothing
        self.engines = list(engines)
        for engine in self.engines:  # engines that report what they did to the host (VIPs added)
            if hasattr(engine, "notify"):
                engine.notify = self._engine_note(engine.name)
        self.checker = HealthChecker(self._on_transition)
        # This node's HA role: set by the keepalived supervisor, read by replication, state
        # sync, the API and the WebUI (core/ha_role.py).
        self.ha = HaState(Role.STARTING if ha_enabled(config) else Role.STANDALONE)
        self.alerts.follow(self.ha)  # in a pair, the active node speaks for the servers
        self.keepalived = KeepalivedSupervisor(
            self.state_dir, self.ha, lambda message, data: self._record("ha", message, data=data)
        )
        self.replica = Replicator(self)
        self.pairing = Pairing(self, self.replica)
        self.ha_sync: Any = None  # state sync and conntrackd (control/hasync.py), with node.ha
        self.plan: Plan | None = None
        self.started = datetime.now(UTC)
        self.revision = 0
        self._text = text
        self._publish_pending = False
        self._publish_lock = asyncio.Lock()
        self._failed_engines: set[str] = set()  # retried on the next publish even if unchanged
        self._retrying = False  # _retry_failed_engines is running
        self.engine_records: dict[str, EngineRecord] = {}
        self._tasks: set[asyncio.Task[Any]] = set()  # strong refs: the loop keeps only weak ones
        self._stopping = asyncio.Event()
        self.keep_data_plane = False
        self._started_up = False  # start() has finished: every engine was given its first Plan
        # Started from the last good revision because the file was broken (control/startup.py):
        # degraded until a config is applied again, which is a reload of the fixed file: an
        # API/WebUI change is refused while the file does not hold the running revision (it
        # would overwrite the operator's file; HandEdited says the file is the broken one).
        # Once the file holds it again (the refusal's discard command), a change ends it too:
        # _apply clears it, even for the same text.
        self.broken_file = broken_file
        # What `pacslb run --degraded` started without (doctor.placement): until an apply of a
        # config (a reload, an API change) checks again and finds none.
        self.placement_problems = tuple(placement_problems)
        self._commit_lock = CommitLock()  # one config change at a time, revision to Plan
        self.leaving: dict[ServerKey, Leaving] = {}  # removed servers still draining
        self._watching_leaving = False

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        # The commit lock opens only once start() has run: the control socket, the WebUI and
        # SIGHUP are live before it (so that `status` answers during start-up), and a reload
        # or an API change applied first would then be undone here by the config read at start
        # (saved again, "degraded" for a fixed file). They wait instead.
        try:
            await self._start()
        finally:
            self._commit_lock.opened.set()

    async def _start(self) -> None:
        rev = self.store.save(
            self._text,
            comment=f"pacslb run {self.config_path}",
            base_dir=self.config_path.resolve().parent,
        )
        self.revision = rev.number
        self._record("process", f"pacslb {__version__} started (pid {os.getpid()})")
        for problem in self.placement_problems:
            self._record("process", f"started degraded (--degraded): {problem}")
        self._check_descriptor_limit()
        if self.broken_file is not None:
            if rev.number != self.broken_file.revision:  # not the latest: saved again
                self._record(
                    "config",
                    f"revision {self.broken_file.revision}, the last good one, saved again as "
                    f"revision {rev.number}",
                )
                self.broken_file = dataclasses.replace(self.broken_file, revision=rev.number)
            self._record("config", self.broken_file.reason())
            for problem in self.broken_file.problems:
                self._record("config", f"{self.broken_file.path}: {problem}")
        source = "the last good one" if self.broken_file else f"from {self.config_path}"
        self._record("config", f"applying revision {rev.number} {source}")
        self._prune_admin()
        self.checker.configure(self.config)
        self._configure_alerts(self.config)
        await self.publish()
        from pacslb.control.hasync import start_ha_sync

        self.ha_sync = await start_ha_sync(self)  # listening for the role before it is known
        await self.keepalived.configure(self.config)  # the data plane first, then the addresses
        self._started_up = True
        self.replica.start()

    @property
    def ready(self) -> bool:
        """Start-up has finished and every engine's last apply succeeded: the config in force
        is the one forwarding. (`pacslb status`, /metrics pacslb_ready, the WebUI's banner.)"""
        return not self.not_ready()

    def not_ready(self) -> list[str]:
        """Why not ready, one line each (empty when ready)."""
        reasons = [] if self._started_up else ["starting: the first Plan is not applied yet"]
        for name, record in sorted(self.engine_records.items()):
            if record.error is not None:
                reasons.append(f"{name}: apply failed: {record.error}")
        return reasons + self.keepalived.not_ready()

    def degraded(self) -> list[str]:
        """What runs differs from what the operator asked for, though it forwards.

        The placement problems `pacslb run --degraded` accepted are listed here, not under
        not_ready: "ready" means that every engine applied the config in force, and one can (a
        DR real server off every segment gets weight 0, and the kernel engine takes the Plan);
        what the operator chose to run without is "degraded", the word of the flag. An engine
        that does fail on them is not ready as well, naming its own error."""
        reasons = [] if self.broken_file is None else [self.broken_file.reason()]
        reasons += [f"cannot be placed on this host: {p}" for p in self.placement_problems]
        if self.ha_sync is not None:  # state sync or conntrackd failing to start (hasync.py)
            reasons += self.ha_sync.degraded()
        return reasons

    def _check_descriptor_limit(self) -> None:
        """Warn at start when the descriptor limit (raised to the hard one by `pacslb run`, and
        inherited by the proxy workers) is low for the configured l7 services."""
        import resource

        from pacslb.core.budget import limit_advice, service_needs
        from pacslb.proxy.tcp import HAVE_SPLICE

        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft == resource.RLIM_INFINITY:
            return
        advice = limit_advice(soft, service_needs(self.config.virtual_services), HAVE_SPLICE)
        if advice is not None:
            self._record("process", f"warning: {advice}")

    async def stop(self) -> None:
        if self.ha_sync is not None:
            await self.ha_sync.flush()  # the newest flows to the peers before it takes over
        keep = self.keep_data_plane
        await self.keepalived.close(keep_running=keep)  # the peer takes over, then we stop
        if self.ha_sync is not None:
            await self.ha_sync.close()
        await self.checker.close()
        await self.alerts.close()  # the last changes out, within a grace of seconds
        for engine in self.engines:
            with contextlib.suppress(Exception):
                await engine.close(keep_running=keep)
        self._record(
            "process",
            "pacslb stopped; the data plane goes on serving its last Plan"
            if keep
            else "pacslb stopped",
        )

    def request_stop(self, keep_data_plane: bool = False) -> None:
        """Stop (SIGTERM, SIGINT, `pacslb stop`). `keep_data_plane`: the proxy workers go
        on serving the last Plan, as after a crash, for the next `pacslb run` to adopt: a
        restart or an upgrade that drops no connection (`pacslb stop --keep-data-plane`)."""
        self.keep_data_plane = keep_data_plane
        # For pacslb.service's ExecStopPost, should this process hang from here on and be
        # SIGKILLed: it stops the data plane unless this says keep (control/stop_intent.py).
        with contextlib.suppress(OSError):
            stop_intent.record(self.state_dir, keep_data_plane)
        self._stopping.set()

    async def wait_stopped(self) -> None:
        await self._stopping.wait()

    # --- plans ---------------------------------------------------------------------------

    def current_plan(self) -> Plan:
        return build_plan(
            self.config, self.checker.health(), self.admin.all(), self.revision, self.leaving
        )

    async def publish(self, force: bool = False) -> Plan:
        """Build the Plan and apply it to every engine; an engine that fails keeps its old state.

        One publish at a time, so engines see Plans in order; the Plan is built after the lock
        is taken, so it holds every change made while the previous one was being applied.
        `force` applies it even when nothing changed (an operator's "re-apply")."""
        async with self._publish_lock:
            return await self._publish(force)

    async def _publish(self, force: bool = False) -> Plan:
        self._publish_pending = False
        plan = self.current_plan()
        previous, self.plan = self.plan, plan
        engines = self.engines
        if previous is not None:
            changes = diff_plans(previous, plan)
            if not changes and not force:
                # Nothing new: only the engines whose last apply failed are given it again (a
                # retry every ENGINE_RETRY s must not re-send the Plan to the healthy ones).
                engines = [e for e in self.engines if e.name in self._failed_engines]
                if not engines:
                    return plan
            if changes:
                summary = "; ".join(str(ch) for ch in changes[:10])
                self._record("plan", f"plan updated: {summary}", data={"changes": len(changes)})
        for engine in engines:
            try:
                await engine.apply(plan)
            except Exception as exc:  # not only EngineError: a bug in one engine must leave
                # it failing and not ready (retried), and must not keep the Plan from the rest
                error = str(exc) if isinstance(exc, EngineError) else repr(exc)
                self._engine_failed(engine.name, error)
            else:
                self.engine_records[engine.name] = EngineRecord(time.time())
                if engine.name in self._failed_engines:
                    self._failed_engines.discard(engine.name)
                    data = {"engine": engine.name, "recovered": True}
                    self._record("engine", f"{engine.name}: plan applied again", data=data)
        return plan

    def _engine_failed(self, name: str, error: str) -> None:
        """`name` does not serve the Plan in force: not ready, naming `error`, and the Plan is
        given to it again every ENGINE_RETRY s until it takes it."""
        self._failed_engines.add(name)
        before = self.engine_records.get(name, EngineRecord())
        self.engine_records[name] = EngineRecord(before.applied_at, error, time.time())
        if error != before.error:  # once per distinct failure, not at every retry
            self._record(
                "engine", f"{name}: apply failed: {error}", data={"engine": name, "error": error}
            )
        if not self._retrying:
            self._retrying = True
            self._background(self._retry_failed_engines())

    async def _retry_failed_engines(self) -> None:
        """Re-apply the Plan now and then while an engine's last apply failed (status stays
        not ready meanwhile, naming the failure)."""
        try:
            while self._failed_engines and not self._stopping.is_set():
                await asyncio.sleep(ENGINE_RETRY)
                if self._failed_engines and not self._stopping.is_set():
                    await self.publish()
        finally:
            self._retrying = False

    def _schedule_publish(self) -> None:
        """Coalesce the changes of one loop turn into one Plan, applied at once."""
        if not self._publish_pending:
            self._publish_pending = True
            self._background(self.publish())

    def _background(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self._record("process", f"background task failed: {task.exception()!r}")

    def _on_transition(self, key: ServerKey, t: Transition, result: ProbeResult) -> None:
        self._record(
            "health",
            f"{t.previous} -> {t.current}: {t.reason}",
            key,
            data={"previous": str(t.previous), "current": str(t.current), "ok": result.ok},
        )
        self._schedule_publish()

    # --- operator commands ---------------------------------------------------------------

    def _check_target(self, service: str, server: str) -> None:
        vs = self.config.service(service)
        if vs is None:
            known = ", ".join(s.label for s in self.config.virtual_services)
            raise UnknownTarget(f"no virtual service {service!r} (known: {known})")
        if not any(rs.label == server for rs in vs.real_servers):
            known = ", ".join(rs.label for rs in vs.real_servers)
            raise UnknownTarget(f"{service} has no real server {server!r} (known: {known})")

    async def set_admin(
        self, service: str, server: str, state: AdminState, by: str = "", replicated: bool = False
    ) -> dict[str, Any]:
        self._check_target(service, server)
        self.replica.refuse_if_not_allowed(replicated)
        previous = self.admin.get(service, server)
        try:
            self.admin.set(service, server, state)
        except StorageError as exc:  # not stored, so not applied: a restart would undo it
            self._record("admin", f"{previous} -> {state} refused: {exc}", (service, server))
            raise
        if previous is not state:
            who = f" by {by}" if by else ""
            data = {"previous": str(previous), "state": str(state)}
            self._record("admin", f"{previous} -> {state}{who}", (service, server), data)
            self.replica.after_change(replicated)
        await self.publish()
        return {
            "service": service,
            "server": server,
            "previous": str(previous),
            "state": str(state),
        }

    async def reload(self) -> dict[str, Any]:
        """Re-read the config file; a config with problems is refused and nothing changes, as
        is one whose revision cannot be saved (StorageError: the reason goes back to the CLI).
        """
        comment = f"reload {self.config_path}"
        self.notifier.reloading()
        try:
            return await self._reload(comment)
        finally:
            self.notifier.ready(status_line(self))

    async def _reload(self, comment: str) -> dict[str, Any]:
        # The file is read under the commit lock: read before it, an API change committed in
        # between would be undone by committing the older text as a newer revision.
        async with self._commit_lock:
            try:
                text, config = await asyncio.to_thread(read_config, self.config_path)
            except ConfigError as exc:
                self._record("config", f"reload refused: {len(exc.problems)} problems")
                raise
            changed = text != self._text
            async with self.replica.change(config, changed=changed):  # HA: control/replica.py
                rev = await self._commit(text, comment, "", write_file=False)
                return {**await self._apply(rev, text, config, comment), "changed": changed}

    async def apply_config(
        self,
        new: c.Config | dict[str, Any] | str,
        comment: str = "",
        by: str = "",
        replicated: bool = False,
    ) -> dict[str, Any]:
        """Apply a new config from the API or WebUI: validate it, save it as a revision,
        write it to the config file (so a restart keeps it), then publish.

        `new` as a Config or plain data (a change made from the running config) is written
        into the config file's own text, keeping its comments, order and spelling
        (core/yaml_edit); as text (a rollback) it is taken verbatim. A change that leaves the
        config as it is makes no revision and writes nothing: {"changed": False}.

        Committed revision-first or not at all: a config with any problem raises ConfigError;
        a write the host refuses (disk full, read-only...) raises StorageError; either way the
        running config, the config file and the revisions stay as they were. ConfigConflict
        when another change was applied while this one was being validated (it was made from
        a config no longer in force); HandEdited (a ConfigConflict) when the config file no
        longer holds the running revision: the operator's edit is never overwritten.

        HA (control/replica.py): refused on the passive node; the peer prepares it first.
        `replicated`: the peer's replica, which the guard lets through and does not send back."""
        base_revision, base_text, base_config = self.revision, self._text, self.config
        base = self.config_path.resolve().parent
        source = f"{by or 'api'} change"

        exists = file_exists(base)

        def prepare() -> tuple[str, c.Config, str] | None:
            if isinstance(new, str):
                if new == base_text:
                    return None
                return new, absolute_paths(load_text(new, source, exists), base), ""
            model = new if isinstance(new, c.Config) else load_data(new, source, exists)
            if absolute_paths(model, base) == base_config:
                return None
            return self._edited_text(base_text, base_config, model, source, exists)

        # Off the event loop: a big config must not stall health checks and the other requests.
        prepared = await asyncio.to_thread(prepare)
        if prepared is None:
            return {"revision": base_revision, "changed": False}
        text, config, layout_lost = prepared
        async with self._commit_lock:
            if self.revision != base_revision:
                raise ConfigConflict(
                    f"the config changed while this change was checked (revision "
                    f"{base_revision} -> {self.revision}); nothing was applied: retry it"
                )
            async with self.replica.change(config, replicated):
                rev = await self._commit(text, comment or source, by, write_file=True)
                result = await self._apply(rev, text, config, comment or source)
            if layout_lost:  # only once the file was rewritten: a refused change lost nothing
                self._record("config", f"the config file's layout could not be kept: {layout_lost}")
            return {**result, "changed": True}

    async def preview_text(self, new: c.Config, source: str) -> str:
        """The config file as applying `new` now would write it (the running file edited in
        place, as apply_config does): for a page to show before the apply (the wizard's
        review). Off the event loop, from one revision's text and config taken together."""
        text, running = self._text, self.config
        exists = file_exists(self.config_path.resolve().parent)
        edited, _, _ = await asyncio.to_thread(
            self._edited_text, text, running, new, source, exists
        )
        return edited

    def _edited_text(
        self, text: str, old: c.Config, new: c.Config, source: str, exists: Any
    ) -> tuple[str, c.Config, str]:
        """`text` (the running revision) edited to hold `new`, validated; when the edit cannot
        be made in place (YAML anchors, say) the whole file is written out again, and the
        third value says why (else "").

        Every outcome of the edit goes through the same net: the edited text must load and
        hold exactly `new`, else it is not used (the change itself is never lost to it)."""
        base = self.config_path.resolve().parent
        wanted = absolute_paths(new, base)
        try:
            edited = edit_text(text, old, new)
            config = absolute_paths(load_text(edited, source, exists), base)
        except EditError as exc:
            reason = str(exc)
        except ConfigError as exc:
            reason = f"an edit in place would not read back: {(exc.problems or [exc])[0]}"
        except Exception as exc:  # a ruamel.yaml surprise must not cost the change itself
            reason = f"{type(exc).__name__}: {exc}"
        else:
            if config == wanted:
                return edited, config, ""
            reason = "an edit in place would also change other settings (YAML anchors?)"
        written = dump_text(new)
        config = absolute_paths(load_text(written, source, exists), base)
        return written, config, reason

    async def _commit(self, text: str, comment: str, by: str, write_file: bool) -> Revision:
        """Save `text` as a revision, then (`write_file`) replace the config file with it.

        The file is replaced only while it still holds the running revision (else HandEdited:
        an operator's edit is never overwritten). If the file cannot be written, the revision
        is withdrawn (the index drops it: it never took effect) so that history holds only
        what went live. Should even that fail, it stays as a revision that was never applied:
        a restart reads the config file, which still holds the running config, and saves that
        as the next revision."""
        base = self.config_path.resolve().parent
        running = self._text

        def commit() -> Revision:
            if write_file:
                try:
                    untouched = file_holds(self.config_path, running)
                except OSError as exc:
                    raise StorageError(
                        f"cannot read {self.config_path} to see whether it was edited by hand: "
                        f"{exc.strerror or exc}; nothing was applied",
                        exc.errno,
                    ) from None
                if not untouched:
                    broken = self.broken_file is not None  # still on the last good revision
                    raise HandEdited(self.config_path, self.revision, self.state_dir, broken)
            latest = self.store.latest()
            rev = self.store.save(text, comment=comment, author=by, base_dir=base, validated=True)
            if not write_file:
                return rev
            created = latest is None or rev.number > latest.number  # else: the text was latest
            try:
                mode = self.config_path.stat().st_mode & 0o777
            except FileNotFoundError:
                mode = 0o600
            # The operator's line endings are kept (CRLF from an editor on Windows): the file
            # still reads as the revision, and a diff of it shows only the change.
            ending = line_ending(self.config_path)
            written = text if "\r" in text else text.replace("\n", ending)
            try:
                write_atomic(self.config_path, written.encode(), mode)
            except OSError as exc:
                refused = storage_error(exc, "config disk")
                if not created:
                    raise refused from None
                try:
                    self.store.withdraw(rev)
                except (StorageError, LookupError) as also:
                    raise StorageError(
                        f"{refused}; revision {rev.number} was saved but is not applied "
                        f"(it could not be withdrawn: {also})",
                        refused.errno,
                    ) from None
                raise refused from None
            return rev

        try:
            return await asyncio.to_thread(commit)
        except StorageError as exc:
            self._record("config", f"change refused: {exc}", data={"errno": exc.errno})
            raise
        except HandEdited as exc:
            self._record("config", f"change refused: {exc}", data={"hand_edit": True})
            raise

    async def _apply(
        self, rev: Revision, text: str, config: c.Config, comment: str
    ) -> dict[str, Any]:
        """Make a committed revision the running config and publish its Plan."""
        previous = self.config
        self.config, self._text, self.revision = config, text, rev.number
        self.broken_file = None  # what runs is a config applied now, no longer the fallback
        self._record("config", f"applying revision {rev.number}: {comment}")
        self.replica.committed()  # the HA peer may be sent it now (control/replica.py)
        self._update_leaving(previous, config)
        try:
            self._prune_admin()
        except (OSError, PacslbError) as exc:  # committed already: a stale entry is harmless
            self._record("admin", f"admin state not pruned: {exc}")
        self.checker.configure(config)
        self._configure_alerts(config)
        await self.publish()
        from pacslb.control.hasync import reconfigure_ha_sync

        self.ha_sync = await reconfigure_ha_sync(self, self.ha_sync, previous)
        await self.keepalived.configure(config)
        # After the publish: awaited before it, a health change meanwhile would publish the new
        # config before _update_leaving's removals were known.
        await self._check_placement(config)
        return {"revision": rev.number}

    async def _check_placement(self, config: c.Config) -> None:
        """Run doctor.placement again for a config being applied: its problems stay listed
        under "degraded" (and the event says so), or "degraded" for them ends."""
        try:
            found = tuple(await asyncio.to_thread(unplaceable, config))
        except Exception as exc:  # a check that breaks must not stop the apply
            self._record("config", f"placement not checked again: {exc!r}")
            return
        if found == self.placement_problems:
            return
        for problem in (p for p in found if p not in self.placement_problems):
            self._record("config", f"cannot be placed on this host: {problem}")
        if not found:
            self._record("config", "every service can be placed on this host again")
        self.placement_problems = found

    def _update_leaving(self, old: c.Config, new: c.Config) -> None:
        """Removed real servers drain first (Leaving); one put back before it is gone returns."""
        now = time.monotonic()
        configured = {(vs.label, rs.label) for vs in new.virtual_services for rs in vs.real_servers}
        for key in [k for k in self.leaving if k in configured]:
            del self.leaving[key]
            self._record("admin", "removed: back in the config before it was gone", key)
        services = {vs.label for vs in new.virtual_services}
        for key in [k for k in self.leaving if k[0] not in services]:
            del self.leaving[key]  # its service went, with its listeners and connections
            self._record("admin", "removed: gone with its virtual service", key)
        if self.plan is None:
            return
        counters = self.counters()
        for key, leaving in removals(self.plan, old, new, now).items():
            self.leaving[key] = leaving
            n = counters[key].active if key in counters else 0
            noun = "connection" if n == 1 else "connections"
            self._record(
                "admin",
                f"removed: draining {n} {noun} (at most {leaving.cap:g} s)",
                key,
                data={"connections": n, "cap": leaving.cap},
            )
        if self.leaving and not self._watching_leaving:
            self._watching_leaving = True
            self._background(self._watch_leaving())

    async def _watch_leaving(self) -> None:
        """Drop each removed server once its connections are gone or its cap has passed."""
        try:
            while self.leaving:
                await asyncio.sleep(LEAVING_POLL)
                active = {key: count.active for key, count in self.counters().items()}
                gone = drained(self.leaving, active, time.monotonic(), LEAVING_SETTLE)
                for key, why in gone.items():
                    self.leaving.pop(key, None)
                    self._record("admin", f"removed: gone ({why})", key)
                if gone:
                    await self.publish()
        finally:
            self._watching_leaving = False

    def _engine_note(self, name: str) -> Any:
        def note(
            message: str, key: ServerKey | None = None, data: dict[str, Any] | None = None
        ) -> None:
            self._record("engine", f"{name}: {message}", key or None, data)
            if (data or {}).get("reason") in ENGINE_REPORTED_FAILURES:
                self._engine_failed(name, message)

        return note

    def _configure_alerts(self, config: c.Config) -> None:
        base = self.config_path.resolve().parent
        self.alerts.configure(config, base, self.state_dir)

    def _prune_admin(self) -> None:
        valid = {
            (vs.label, rs.label) for vs in self.config.virtual_services for rs in vs.real_servers
        }
        for service, server in self.admin.prune(valid):
            self._record("admin", "admin state dropped: no longer in the config", (service, server))

    # --- views ---------------------------------------------------------------------------

    def counters(self) -> dict[ServerKey, Counters]:
        merged: dict[ServerKey, Counters] = {}
        for engine in self.engines:
            merged.update(engine.counters())
        return merged

    def engine_status(self) -> dict[str, Any]:
        """What engines that run processes of their own say of them (the proxy: its workers)."""
        out = {}
        for engine in self.engines:
            describe = getattr(engine, "status", None)
            if callable(describe):
                out[engine.name] = describe()
        return out

    def status(self) -> dict[str, Any]:
        """Every VIP and real server, live: `pacslb status`, GET /api/v1/status, the WebUI."""
        return status_json(self)

    def _record(
        self,
        kind: str,
        message: str,
        key: ServerKey | None = None,
        data: dict[str, Any] | None = None,
    ) -> None:
        service, server = key or ("", "")
        event = self.events.record(Event(kind, message, service, server, data=data or {}))
        if self.events.echo:  # not when stdout is the journal, which has the event already
            with contextlib.suppress(OSError, ValueError):  # stdout gone (EPIPE): go on
                print(event, flush=True)
