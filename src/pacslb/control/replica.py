"""Replication of an HA pair: every change of one node reaches the other, nothing half-applied.

State transfer, not an op log (core/replication.py says what is replicated and why a
generation decides the direction). The parts, all on the control process's loop:

- **The guard** (`change()` around every config change's commit, `refuse_if_not_allowed` and
  `after_change` around an admin state change, called by ControlProcess). Once paired, changes
  of services or admin states are taken on the active node only: on the passive node and on a
  node starting, stopped or in fault every one is refused, naming the peer (a node that is not
  active must never raise its generation: its state would win); during a split brain too, on
  both (a change of `node:` only is the node's own, always
  taken). On the node that makes a change, the peer is
  first asked to *prepare* it (validate the services with its own `node:` and its own files);
  a refusal refuses the change here as well, naming the peer's problems. A peer that does not
  answer does not stop the change: this node keeps serving and committing, and is behind.
- **The sync loop**: polls the peer's `GET /api/v1/ha/status` every second (role, digest and
  generation of its replicated state), reports split brain and conflicts (both nodes changed
  since the last state they agreed on: nothing is pushed until an operator keeps one side,
  `resolve`), and pushes this node's state (`PUT /api/v1/ha/replica`) whenever it holds the
  newer one, with a bounded back-off while the peer does not answer. A push runs as its own
  task, so a peer that stalls it does not stop the polls (split brain is still seen).
- **The receiving side** (`prepare`, `receive`): a replica is applied as an ordinary revision
  of this node's own config file (its `node:` kept, its file's layout kept) plus admin states.

Pairing itself (the handshake) is control/pairing.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from pacslb import config as c
from pacslb.control.peer import (
    PEER_FILE,
    Answer,
    PeerError,
    PeerRecord,
    WrongCertificate,
    load_record,
    save_record,
)
from pacslb.control.store import ConfigConflict, StateFileError, file_exists
from pacslb.core import replication as r
from pacslb.core.ha_role import Role, ha_enabled
from pacslb.core.state import AdminState
from pacslb.core.validate import dump_data, load_data
from pacslb.errors import ConfigError, PacslbError, Problem

if TYPE_CHECKING:
    from pacslb.control.app import ControlProcess

POLL = 1.0  # seconds between polls of the peer's status (split brain within a few seconds)
BACKOFF_MAX = 2.0  # longest wait between tries while the peer does not answer
PREPARE_TIMEOUT = 5.0  # the peer validates a whole config: more than one poll's time
PUSH_TIMEOUT = 15.0  # ... and applies it (a revision, a Plan to its engines)
REFUSED_RETRY = 30.0  # seconds before a state the peer refused (422) is offered again
PEER_BY = "ha-peer"  # the author of replicated revisions and admin changes


class PassiveNode(ConfigConflict):
    """A change asked of the passive node of a pair (409): changes are made on the active one."""


class SplitBrain(ConfigConflict):
    """A change asked while both nodes are active (409): it could not be replicated safely."""


class Replicator:
    def __init__(self, process: ControlProcess) -> None:
        self.process = process
        self.path = process.state_dir / PEER_FILE
        self.problem: str | None = None  # ha-peer.json could not be read: not paired until fixed
        try:
            self.record: PeerRecord | None = load_record(self.path)
        except StateFileError as exc:  # the load balancer runs on; status and an event say so
            self.record, self.problem = None, f"{exc}: not paired until it is fixed or paired again"
        self.view: r.PeerView | None = None
        self.watch = r.SplitBrainWatch()
        self.refused: str | None = None  # the peer's last refusal of a push, while it stands
        self._refused_digest: str | None = None  # the state it refused: not pushed again
        self._wake = asyncio.Event()
        self._cache: tuple[c.Config, Any, str] | None = None  # (config, admin states, digest)
        self._refused_at = 0.0  # monotonic time of the last refused push
        self.last_push_ms: float | None = None
        self.last_error: str | None = None
        self._started = False  # the process has started (no sync before that)
        self._unsent = False  # a local config change is being applied, not yet sent
        # A replica being applied: its services, and set once it is committed and running.
        self._replica_commit: tuple[list[c.VirtualService], asyncio.Event] | None = None
        self._looping = False  # the sync loop runs (only while paired)
        self._pushing: asyncio.Task[None] | None = None  # a push in flight (one at a time)
        self.conflicted = False  # both nodes changed since they last agreed (see resolve)
        self._push_error: str | None = None  # the last failed push's reason (event once)

    # --- identity and state --------------------------------------------------------------

    @property
    def peer_name(self) -> str:
        if self.record is not None:
            return self.record.host
        ha = self.process.config.node.ha
        return ", ".join(str(p) for p in ha.peers) if ha and ha.peers else "the peer"

    @property
    def generation(self) -> int:
        return self.record.generation if self.record else 0

    def own_state(self) -> dict[str, Any]:
        services = [vs.model_dump(mode="json") for vs in self.process.config.virtual_services]
        return r.replicated_state(services, self.process.admin.all())

    def own_digest(self) -> str:
        config, admin = self.process.config, self.process.admin.all()
        states = tuple(sorted(admin.items()))
        cache = self._cache
        if cache is None or cache[0] is not config or cache[1] != states:
            services = [vs.model_dump(mode="json") for vs in config.virtual_services]
            cache = self._cache = (config, states, r.digest(r.replicated_state(services, admin)))
        return cache[2]

    def _save(self, **changes: Any) -> None:
        """The pairing record with `changes` (generation, applied revision), kept on disk."""
        if self.record is None:
            return
        self.record = dataclasses.replace(self.record, **changes)
        save_record(self.path, self.record)

    def replication(self) -> r.Replication:
        view = self.view
        if self.record is not None and view is None:  # paired, not polled yet
            view = r.PeerView(True, None, None, None, 0, 0)
        return r.replication_status(
            self.own_digest(),
            self.generation,
            self.process.revision,
            view if self.record is not None else None,
            self.refused,
            self.watch.split,
            self.conflicted,
        )

    def status_json(self) -> dict[str, Any]:
        """GET /api/v1/ha/status, `pacslb ha status`, the Overview; what the peer polls."""
        process = self.process
        ha = process.config.node.ha
        rep = self.replication()
        peer: dict[str, Any] | None = None
        if self.record is not None:
            view = self.view
            peer = {
                "address": self.record.host,
                "port": self.record.port,
                "fingerprint": self.record.fingerprint,
                "paired_at": self.record.paired_at,
                "role": str(view.role) if view and view.role else None,
                "reachable": view.reachable if view else None,
                "unreachable_since": view.unreachable_since if view else None,
                "error": self.last_error,  # why the last call to it failed
            }
        return {
            "enabled": ha_enabled(process.config),
            "role": str(process.ha.role),
            "role_since": process.ha.since_wall,
            "priority": ha.priority if ha else None,
            "paired": self.record is not None,
            "peer": peer,
            "replication": {"state": rep.state, "text": rep.text, "behind": rep.behind},
            "split_brain": self.watch.split,
            "conflict": self.conflicted,
            "revision": process.revision,
            "digest": self.own_digest(),
            "generation": self.generation,
            "applied_revision": self.record.applied_revision if self.record else 0,
            "last_push_ms": self.last_push_ms,
            "problem": self.problem,
        }

    def record_event(self, message: str, data: dict[str, Any] | None = None) -> None:
        self.process._record("ha", message, data=data)

    # --- the guard -------------------------------------------------------------------------

    def refuse_if_not_allowed(self, replicated: bool) -> None:
        """PassiveNode on the passive node of a pair, SplitBrain while both are active;
        replication calls from the paired peer are the exception.

        Only once paired: the nodes of an HA pair that is not paired (whose services are kept
        alike by other means, a configuration tool writing both files and reloading both) take
        changes as standalone nodes do; nothing would carry a change from one to the other."""
        if replicated or self.record is None:
            return
        role = self.process.ha.role
        if role is Role.PASSIVE:
            raise PassiveNode(
                "this node is the passive node of an HA pair; make changes on the active node "
                f"{self.peer_name}"
            )
        if role is not Role.ACTIVE and role is not Role.STANDALONE:
            # Starting, stopped (keepalived down), fault: such a node's change would raise its
            # generation, and the higher generation wins whatever the roles.
            raise PassiveNode(
                f"this node is {role}, not the active node of its HA pair: changes are taken "
                f"on the active node only (the peer {self.peer_name} when it is active)"
            )
        if self.watch.split:
            raise SplitBrain(
                "both nodes of the HA pair are active (split brain): changes are refused on "
                "both until one of them is passive again (keepalived decides by priority when "
                "the nodes hear each other)"
            )

    async def before_change(self, config: c.Config | None, replicated: bool) -> None:
        """Called under the commit lock before a change commits (`config`: the new config,
        None for an admin state change). Raises to refuse it; nothing has changed then."""
        self.refuse_if_not_allowed(replicated)
        if replicated or config is None or self.record is None:
            return
        if self.view is not None and not self.view.reachable:
            # Known to be away: not waited for at every change. The state goes to the peer when
            # it answers again, and a refusal then shows as "refused (reason)" on both nodes.
            self.record_event(
                f"peer {self.peer_name} is unreachable: the change is committed here and "
                "replicated when it answers again"
            )
            return
        services = [vs.model_dump(mode="json") for vs in config.virtual_services]
        client = self.record.client()
        try:
            answer = await client.post(
                "/api/v1/ha/prepare", {"virtual_services": services}, timeout=PREPARE_TIMEOUT
            )
        except PeerError as exc:
            self._unreachable(exc)
            self.record_event(
                f"peer {self.peer_name} could not check the change ({exc}); it is committed "
                "here and replicated when the peer answers again"
            )
            return
        if answer.status == 422:
            problems = _peer_problems(answer, self.peer_name)
            summary = "; ".join(p.message for p in problems[:3])
            self.record_event(f"change refused: peer {self.peer_name} refused it: {summary}")
            raise ConfigError(problems, f"peer {self.peer_name}")
        if answer.status == 409:
            self.record_event(f"change refused: peer {self.peer_name}: {answer.detail()}")
            raise ConfigConflict(f"peer {self.peer_name} refused the change: {answer.detail()}")
        if not answer.ok:  # a token revoked there, say: the change goes on, the state says why
            self.refused = f"the peer answered {answer.status}: {answer.detail()}"
            self.record_event(f"peer {self.peer_name} did not check the change: {self.refused}")

    @contextlib.asynccontextmanager
    async def change(
        self, config: c.Config, replicated: bool = False, changed: bool = True
    ) -> AsyncIterator[None]:
        """Around a config change's commit and apply: the guard before it, replication after
        it (when it went through). Neither for the same config again (`changed` False: a
        reload of an unchanged file), nor for a change of `node:` only: it never leaves the
        node, so it is this node's own to make, on the passive node too (its priority, its
        WebUI...), and there is nothing to replicate."""
        node_only = (
            changed
            and not replicated
            and config.virtual_services == self.process.config.virtual_services
        )
        local = changed and not node_only and not replicated
        if changed and not node_only:
            await self.before_change(config, replicated)
        self._unsent = local
        yield
        if local:
            self.committed()  # unless the apply said so already, as it began
        elif changed:
            self._cache = None

    def committed(self) -> None:
        """The change is committed here and is the running config: the peer may have it now,
        while this node publishes it, not only once the apply's last steps (the engines,
        keepalived, the placement check: a second or so on a loaded host) are done. A replica
        being received is answered as committed from here on too (see `_apply_replica`)."""
        waiting = self._replica_commit
        if waiting is not None and self.process.config.virtual_services == waiting[0]:
            waiting[1].set()
        if self._unsent:
            self._unsent = False
            self.after_change(replicated=False)

    def after_change(self, replicated: bool) -> None:
        """Called once a change is committed and applied here."""
        self._cache = None
        if replicated or self.record is None:
            return
        peer_generation = self.view.generation if self.view else 0
        self._save(generation=max(self.generation, peer_generation) + 1)
        self._wake.set()  # push now, not at the next poll

    # --- the sync loop ---------------------------------------------------------------------

    def start(self) -> None:
        """Called once the process has started: the loop runs while this node is paired."""
        self._started = True
        if self.problem is not None:
            self.record_event(self.problem)
        self.wake()

    def wake(self) -> None:
        self._wake.set()
        if self._started and not self._looping and self.record is not None:
            self._looping = True
            self.process._background(self._loop())

    async def _loop(self) -> None:
        wait = POLL
        stopping = self.process._stopping
        try:
            while not stopping.is_set() and self.record is not None:
                await self._turn(wait)
                wait = await self._sync_or_back_off(wait)
        finally:
            self._looping = False

    async def _turn(self, wait: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                await self._wake.wait()
        self._wake.clear()

    async def _sync_or_back_off(self, wait: float) -> float:
        """One sync; the next wait: POLL after an answer, longer while there is none."""
        if self.process._stopping.is_set() or self.record is None:
            return POLL
        try:
            await self.sync_once()
        except PeerError as exc:
            self._unreachable(exc)
            return min(wait * 2, BACKOFF_MAX)
        except Exception as exc:  # a bug here must not end replication for good
            self.record_event(f"replication: {exc!r}")
            return BACKOFF_MAX
        return POLL

    async def sync_once(self) -> None:
        """One poll of the peer; a push when this node holds the newer state."""
        record = self.record
        if record is None:
            return
        answer = await record.client().get("/api/v1/ha/status")
        if not answer.ok or not isinstance(answer.body, dict):
            raise PeerError(f"status: {answer.status} {answer.detail()}")
        self._heard(answer.body)
        view = self.view
        assert view is not None
        own = self.own_digest()
        if view.digest == own:
            self._agreed(own)
        self._observe_conflict(own, view)
        # A refused state is not sent again at every poll, but now and then: the cause may be
        # gone (the peer's hand-edited file put back, a change that raced it).
        retry = time.monotonic() - self._refused_at > REFUSED_RETRY
        pushing = self._pushing is not None and not self._pushing.done()
        if (
            not pushing
            and (own != self._refused_digest or retry)
            and r.should_push(
                self.process.ha.role, self.generation, own, view, self.watch.split, self.conflicted
            )
        ):
            # Its own task: a peer that stalls a push (up to PUSH_TIMEOUT) must not stop the
            # polls, nor split brain detection.
            self._pushing = asyncio.ensure_future(self._push_guarded())
            self.process._tasks.add(self._pushing)
            self._pushing.add_done_callback(self.process._tasks.discard)

    async def _push_guarded(self) -> None:
        try:
            await self.push()
        except PeerError as exc:
            self.last_error = str(exc)
            if self._push_error != str(exc):
                self._push_error = str(exc)
                self.record_event(f"push to peer {self.peer_name} failed: {exc}; tried again")
        except Exception as exc:  # a bug here must not end replication for good
            self.record_event(f"replication push: {exc!r}")

    def _agreed(self, digest: str) -> None:
        """Both nodes hold `digest`: the last common state, remembered (conflict detection)."""
        record = self.record
        if record is not None and record.common_digest != digest:
            self._save(common_digest=digest, common_generation=self.generation)
        if self.conflicted:
            self.conflicted = False
            self.record_event("replication conflict over: both nodes hold the same state")

    def _observe_conflict(self, own: str, view: r.PeerView) -> None:
        record = self.record
        common = record.common_digest if record else None
        now = r.in_conflict(own, view.digest, common)
        if now and not self.conflicted:
            self.record_event(
                f"replication conflict: this node (revision {self.process.revision}, state "
                f"{own}) and peer {self.peer_name} (revision {view.revision}, state "
                f"{view.digest}) both changed since they last agreed (state {common}); nothing "
                "is replicated until an operator keeps one side: `pacslb ha resolve "
                "--keep-this` on the node whose state is to win",
                data={
                    "conflict": True,
                    "revision": self.process.revision,
                    "peer_revision": view.revision,
                },
            )
        self.conflicted = now

    def resolve(self) -> dict[str, Any]:
        """The operator keeps this node's state: it becomes the newer one (a generation above
        both) and the peer's state counts as the last common one, so this node pushes and the
        peer takes it (the peer, still in conflict, pushes nothing meanwhile)."""
        record, view = self.record, self.view
        if record is None:
            raise ConfigConflict("this node is not paired")
        if view is None or not view.reachable or view.digest is None:
            raise ConfigConflict(f"the peer {self.peer_name} does not answer: nothing to resolve")
        generation = max(self.generation, view.generation) + 1
        self._save(generation=generation, common_digest=view.digest)
        was = self.conflicted
        self.conflicted = False
        self.refused = self._refused_digest = None
        self.record_event(
            f"replication {'conflict ' if was else ''}resolved by the operator: this node's "
            f"state (revision {self.process.revision}) is kept and replaced peer "
            f"{self.peer_name}'s (revision {view.revision})"
        )
        self.wake()
        return {"kept": "this node", "revision": self.process.revision, "generation": generation}

    def _heard(self, body: dict[str, Any]) -> None:
        self.last_error = None
        before = self.view
        if before is not None and not before.reachable:
            self.record_event(f"peer {self.peer_name} answers again")
        try:
            role: Role | None = Role(str(body.get("role")))
        except ValueError:
            role = None
        self.view = r.PeerView(
            True,
            None,
            role,
            str(body.get("digest")),
            int(body.get("generation") or 0),
            int(body.get("applied_revision") or 0),
            int(body.get("revision") or 0),
        )
        change = self.watch.observe(self.process.ha.role, role, f"peer {self.peer_name}")
        if change is not None:
            self.record_event(change.message, data={"split_brain": change.started})

    def _unreachable(self, exc: Exception) -> None:
        self.last_error = str(exc)
        before = self.view
        if before is not None and not before.reachable:
            return
        since = time.time()
        if before is None:
            self.view = r.PeerView(False, since, None, None, 0, 0)
        else:
            self.view = r.PeerView(
                False, since, before.role, before.digest, before.generation, before.applied_revision
            )
        kind = "not the pinned certificate" if isinstance(exc, WrongCertificate) else ""
        self.record_event(f"peer {self.peer_name} unreachable{': ' + kind if kind else ''}: {exc}")

    async def push(self) -> None:
        """Send this node's replicated state; the peer applies it or refuses it whole."""
        record = self.record
        if record is None:
            return
        state = self.own_state()
        own = r.digest(state)
        revision = self.process.revision
        body = {**state, "generation": self.generation, "revision": revision}
        started = time.monotonic()
        answer = await record.client().put("/api/v1/ha/replica", body, timeout=PUSH_TIMEOUT)
        elapsed = (time.monotonic() - started) * 1000
        if answer.ok and isinstance(answer.body, dict):
            self.refused = self._refused_digest = self._push_error = None
            self.last_push_ms = round(elapsed, 1)
            if self.view is not None:
                self.view = r.PeerView(
                    True,
                    None,
                    self.view.role,
                    str(answer.body.get("digest")),
                    int(answer.body.get("generation") or 0),
                    int(answer.body.get("applied_revision") or 0),
                    int(answer.body.get("revision") or 0),
                )
            if answer.body.get("digest") == own:
                self._agreed(own)
            self.record_event(
                f"replicated revision {revision} to peer {self.peer_name} (applied there as "
                f"revision {answer.body.get('revision')}, {elapsed:.0f} ms)",
                data={"revision": revision, "ms": round(elapsed, 1)},
            )
            return
        if answer.status != 422:
            # Not a refusal of the state: a change racing it there (409), a server error, a
            # token problem. Tried again at the next poll; said once, the status shows it.
            reason = f"{answer.status}: {answer.detail()}"
            self.last_error = f"push: {reason}"
            if self._push_error != reason:
                self._push_error = reason
                self.record_event(
                    f"peer {self.peer_name} did not take revision {revision} ({reason}); "
                    "tried again at the next poll"
                )
            return
        reason = "; ".join(p.message for p in _peer_problems(answer, self.peer_name)[:3])
        again = self.refused == reason and self._refused_digest == own
        self.refused, self._refused_digest = reason, own
        self._refused_at = time.monotonic()
        if not again:  # once per refusal, not at every retry
            self.record_event(f"peer {self.peer_name} refused revision {revision}: {reason}")

    # --- the receiving side ----------------------------------------------------------------

    def _config_with(self, services: Any, source: str) -> c.Config:
        """This node's config with `services` in place of its own: its `node:` stays."""
        data = dump_data(self.process.config)
        data["virtual_services"] = services
        base = self.process.config_path.resolve().parent
        return load_data(data, source, file_exists(base))

    async def prepare(self, body: dict[str, Any]) -> dict[str, Any]:
        """Validate the services the peer is about to commit, with this node's own `node:` and
        files; ConfigError (every problem) when this node could not apply them."""
        if self.watch.split:
            raise SplitBrain("both nodes are active (split brain): no change is replicated")
        source = f"change from peer {self.peer_name}"
        try:
            await asyncio.to_thread(self._config_with, body.get("virtual_services"), source)
        except ConfigError as exc:
            summary = "; ".join(str(p) for p in exc.problems[:3])
            self.record_event(f"refused a change of peer {self.peer_name}: {summary}")
            raise
        return {"valid": True}

    async def receive(self, body: dict[str, Any]) -> dict[str, Any]:
        """Apply the peer's replicated state: its services as a revision of this node's config
        and its admin states. A state that does not validate here is refused whole."""
        if self.watch.split:
            raise SplitBrain("both nodes are active (split brain): no change is replicated")
        process = self.process
        revision = int(body.get("revision") or 0)
        generation = int(body.get("generation") or 0)
        source = f"replica from peer {self.peer_name}"
        try:
            admin = r.admin_from_json(body.get("admin", {}))
        except ValueError as exc:
            raise ConfigError([Problem("admin", str(exc))], source) from None
        try:
            config = await asyncio.to_thread(
                self._config_with, body.get("virtual_services"), source
            )
        except ConfigError as exc:
            summary = "; ".join(str(p) for p in exc.problems[:3])
            self.record_event(
                f"refused revision {revision} replicated from peer {self.peer_name}: {summary}"
            )
            raise
        comment = f"replicated from {self.peer_name} revision {revision}"
        result = await self._apply_replica(config, comment)
        current = process.admin.all()
        changed, failed = [], []
        for key in sorted(set(current) | set(admin)):
            want = admin.get(key, AdminState.ONLINE)
            if current.get(key, AdminState.ONLINE) is want:
                continue
            try:
                await process.set_admin(*key, want, by=PEER_BY, replicated=True)
                changed.append(f"{key[0]}/{key[1]} {want}")
            except PacslbError as exc:  # a server gone with the config is pruned: no match
                failed.append(f"{key[0]}/{key[1]} {want}: {exc}")
        self._cache = None
        sent = r.digest(
            {"virtual_services": body.get("virtual_services"), "admin": body.get("admin", {})}
        )
        if self.own_digest() != sent:
            # Not the peer's state after all: its generation is not taken (it would count as in
            # sync, and the digests never match: pushed every second forever). 422, the reason.
            why = "; ".join(failed[:3]) or "the applied state differs from the one sent"
            self.record_event(
                f"replica of peer {self.peer_name} revision {revision} not fully applied: {why}"
            )
            raise ConfigError(
                [Problem("admin", f"the replicated state could not be applied whole: {why}")],
                source,
            )
        self._save(generation=generation, applied_revision=revision)
        self._agreed(sent)
        what = f"revision {result['revision']}" if result["changed"] else "no config change"
        admin_text = f"; admin: {', '.join(changed)}" if changed else ""
        self.record_event(
            f"replicated from peer {self.peer_name} revision {revision}: {what}{admin_text}",
            data={"revision": result["revision"], "from_revision": revision},
        )
        return {
            "revision": process.revision,
            "digest": self.own_digest(),
            "generation": self.generation,
            "applied_revision": revision,
        }

    async def _apply_replica(self, config: c.Config, comment: str) -> dict[str, Any]:
        """apply_config for a replica, answered once it is committed and running here: the
        rest of the apply (engines, keepalived, the placement check) goes on meanwhile, so the
        peer's next push (a drain right after) does not wait a second for it. Nothing can
        undo a change after its commit (committed revision-first or not at all), so the answer
        is the same; a refusal comes before the commit and is answered as before."""
        process = self.process
        committed = asyncio.Event()
        self._replica_commit = (config.virtual_services, committed)
        apply = asyncio.ensure_future(
            process.apply_config(config, comment, by=PEER_BY, replicated=True)
        )
        waiter = asyncio.ensure_future(committed.wait())
        try:
            await asyncio.wait({apply, waiter}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            self._replica_commit = None
        if apply.done():
            result: dict[str, Any] = apply.result()  # ConfigError, ConfigConflict: refused
            return result
        process._tasks.add(apply)  # the rest of the apply: its failure is an event, as always
        apply.add_done_callback(process._finished)
        return {"revision": process.revision, "changed": True}


def _peer_problems(answer: Answer, peer: str) -> list[Problem]:
    """The peer's 422 problems, each prefixed with the peer's name."""
    body = answer.body if isinstance(answer.body, dict) else {}
    problems = []
    for p in body.get("problems") or []:
        if isinstance(p, dict):
            where = str(p.get("where") or p.get("path") or "")
            text = f"{where}: {p.get('message')}" if where else str(p.get("message"))
            problems.append(Problem(str(p.get("path", "")), f"peer {peer}: {text}"))
    return problems or [Problem("", f"peer {peer}: {answer.detail()}")]
