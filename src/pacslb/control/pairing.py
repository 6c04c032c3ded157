"""Pairing of two HA nodes, as the guide's appendix does it: on the node that will be active,
add the peer by its address and an API credential of the peer.

The handshake (`pair`, run on this node, with `hello` and `join` answered by the peer):
1. TLS to the peer's WebUI; the SHA-256 fingerprint of the certificate it presents is pinned.
   The operator may pass the fingerprint to check (read on the peer's console); otherwise it
   is trusted on first use and printed, as SSH does at its first contact.
2. `POST /api/v1/ha/hello {nonce}` with the operator's token of the peer: the peer answers
   whether node.ha is enabled there, its role and replicated state, and proves it holds the
   same node.ha.secret: an HMAC of our nonce *and of its own certificate's fingerprint*, with
   a nonce of its own. The secret never travels. This node checks the proof against the
   fingerprint it pinned: a relay in the middle presenting another certificate fails here, so
   trust on first use is safe as long as both nodes hold the secret.
3. This node refuses to go on unless it is active, and (unless forced) when the peer is active
   or holds other services: its state would replace the peer's.
4. This node mints a token for the peer (`ha-peer`) and sends `POST /api/v1/ha/join`: its
   address and port, its certificate's fingerprint, that token, and its proof of the secret
   over the peer's nonce, both fingerprints (the peer's as pinned here, its own) and those join
   fields; the peer checks it with its own certificate's fingerprint, mints a token of its own
   for this node and answers it. Each node calls the other with the token the other minted: the
   operator's token is used for hello and join only. `ha-peer` tokens may call /api/v1/ha/*
   only (control/auth.py), and the replication calls accept only the pairing's own token.
Then replication pushes this node's state to the peer (a higher generation: see
core/replication.py). `unpair` removes the pairing on both nodes and revokes, on each, the
token it minted for the other (never an operator's token).
"""

from __future__ import annotations

import secrets
import socket
import ssl
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pacslb.control.auth import AuthStore
from pacslb.control.peer import (
    PeerClient,
    PeerError,
    PeerRecord,
    certificate_fingerprint,
    host_port,
    remove_record,
    save_record,
)
from pacslb.core import replication as r
from pacslb.core.auth import Role as UserRole
from pacslb.core.ha_role import Role, ha_enabled
from pacslb.errors import PacslbError

if TYPE_CHECKING:
    from pacslb.control.app import ControlProcess
    from pacslb.control.replica import Replicator

DEFAULT_PORT = 9443  # node.webui.listen's default port
PEER_TOKEN_NAME = "ha-peer"
NONCE_LIFETIME = 60.0  # seconds a `hello` nonce may wait for its `join`


def join_fields(
    peer_print: str, own_print: str, host: str, port: int, token: str
) -> tuple[str, ...]:
    """What the join proof covers: the pinned certificates (the pairing node's view of the
    peer's, its own) and the join's address, port and token."""
    return (peer_print, own_print, host, str(port), token)


class PairingError(PacslbError):
    """Pairing (or unpairing, a takeover) could not be done; the message says why."""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class Pairing:
    def __init__(self, process: ControlProcess, replicator: Replicator) -> None:
        self.process = process
        self.replicator = replicator
        self.auth = AuthStore(process.state_dir)
        self._nonces: dict[str, float] = {}  # issued by hello, spent by join

    def _secret(self) -> str:
        ha = self.process.config.node.ha
        if not ha_enabled(self.process.config) or ha is None or ha.secret is None:
            raise PairingError(
                "node.ha is not enabled on this node: pairing needs node.ha (enabled, "
                "interface, peers, secret) on both nodes"
            )
        return ha.secret

    # --- this node pairs -------------------------------------------------------------------

    async def pair(
        self, address: str, token: str, fingerprint: str | None = None, force: bool = False
    ) -> dict[str, Any]:
        secret = self._secret()
        role = self.process.ha.role
        if role is not Role.ACTIVE:  # its config would replace the active one's
            raise PairingError(
                f"this node is {role}, not active: pair from the active node (its "
                "configuration becomes the pair's); a node that is not active (keepalived "
                "stopped or in fault, a fresh install) must not replace the pair's services"
            )
        try:
            host, port = host_port(address, DEFAULT_PORT)
            expected = r.normal_fingerprint(fingerprint) if fingerprint else None
        except ValueError as exc:
            raise PairingError(str(exc)) from None
        if not token.strip():
            raise PairingError("an API token of the peer is needed (admin role)")
        try:
            seen = await certificate_fingerprint(host, port)
        except PeerError as exc:
            raise PairingError(f"the peer {host}:{port} cannot be reached: {exc}") from None
        if expected is not None and seen != expected:
            self.replicator.record_event(
                f"pairing with {host}:{port} refused: its certificate is {seen}, not {expected}"
            )
            raise PairingError(
                f"{host}:{port} presents a certificate with fingerprint {seen}, not the "
                f"{expected} given: not paired (is it the peer?)"
            )
        client = PeerClient(host, port, seen, token.strip())
        nonce = secrets.token_hex(16)
        hello = await self._call(client, "/api/v1/ha/hello", {"nonce": nonce})
        body = hello if isinstance(hello, dict) else {}
        if not body.get("enabled"):
            raise PairingError(f"node.ha is not enabled on the peer {host}: enable it there first")
        if not r.proof_ok(secret, r.PROOF_PEER, nonce, str(body.get("proof", "")), seen):
            raise PairingError(
                f"the peer {host} does not prove this node's node.ha.secret for the "
                f"certificate {seen} seen here: either the secrets differ (set the same "
                "secret on both nodes) or something between the nodes presents its own "
                "certificate: not paired"
            )
        if not force:
            self._check_peer_state(host, body)
        own_host, own_port = self._own_address(host, port)
        own_print = self.own_fingerprint()
        old = self.replicator.record
        if old is not None:  # paired before (with this peer or another): its token goes
            self.auth.revoke(old.given_token_id)
        info, given = self.auth.create_token(PEER_TOKEN_NAME, UserRole.ADMIN, "ha pairing")
        peer_nonce = str(body.get("nonce", ""))
        join = {
            "address": own_host,
            "port": own_port,
            "fingerprint": own_print,
            "token": given,
            "nonce": peer_nonce,
            "proof": r.proof(
                secret,
                r.PROOF_ACTIVE,
                peer_nonce,
                *join_fields(seen, own_print, own_host, own_port, given),
            ),
        }
        try:
            joined = await self._call(client, "/api/v1/ha/join", join)
            minted = str(joined.get("token") or "") if isinstance(joined, dict) else ""
            if not minted:
                raise PairingError(
                    f"the peer {host} gave no token of its own at join (an older pacslb?): "
                    "not paired"
                )
        except PairingError:
            self.auth.revoke(info.id)
            raise
        peer_generation = int(body.get("generation") or 0)
        record = PeerRecord(
            host=host,
            port=port,
            fingerprint=seen,
            token=minted,  # the peer's own token for this node, not the operator's
            given_token_id=info.id,
            paired_at=_now(),
            # Higher than the peer's: this node's config is the pair's from now on.
            generation=max(old.generation if old else 0, peer_generation) + 1,
        )
        self._store(record)
        how = "checked against the fingerprint given" if expected else "trusted on first use"
        self.replicator.record_event(
            f"paired with {host}:{port} (certificate {seen}, {how}); this node's config is "
            "replicated to it"
        )
        return {
            "peer": f"{host}:{port}",
            "fingerprint": seen,
            "trusted_on_first_use": expected is None,
            "own_address": f"{own_host}:{own_port}",
            "own_fingerprint": own_print,
        }

    def _check_peer_state(self, host: str, hello: dict[str, Any]) -> None:
        """Refuse (unless forced) a pairing that would overwrite a peer that serves: an active
        peer, or one whose services differ from this node's (this node's replace them)."""
        if hello.get("role") == Role.ACTIVE:
            raise PairingError(
                f"the peer {host} says it is active too: pairing now would replace its "
                "services with this node's; fix VRRP first (one active node), or pair with "
                "--force to replace them anyway"
            )
        peer_services = int(hello.get("services") or 0)
        own_services = len(self.process.config.virtual_services)
        if peer_services and hello.get("digest") != self.replicator.own_digest():
            what = "none" if own_services == 0 else f"{own_services}, different ones"
            raise PairingError(
                f"the peer {host} has {peer_services} virtual service(s) and this node {what}: "
                "pairing replaces the peer's services and admin states with this node's; pair "
                "with --force if that is what you want"
            )

    async def _call(self, client: PeerClient, path: str, body: dict[str, Any]) -> Any:
        try:
            answer = await client.post(path, body)
        except PeerError as exc:
            raise PairingError(f"the peer {client.name} cannot be reached: {exc}") from None
        if answer.status in (401, 403):
            raise PairingError(
                f"the peer {client.name} refused the token ({answer.status}: {answer.detail()}); "
                "create an admin token on the peer (`pacslb token create NAME --role admin`)"
            )
        if answer.status == 404:
            raise PairingError(f"{client.name} is no pacslb with HA pairing (404 for {path})")
        if not answer.ok:
            raise PairingError(f"the peer {client.name} refused: {answer.detail()}")
        return answer.body

    def _own_address(self, peer_host: str, peer_port: int) -> tuple[str, int]:
        """How the peer reaches this node's API: the WebUI's own listen address when it is
        one, else node.ha.address, else the address this host sends from towards the peer."""
        config = self.process.config
        host, port = config.node.webui.address()
        if host not in ("0.0.0.0", "::", ""):
            return host, port
        if config.node.ha is not None and config.node.ha.address is not None:
            return str(config.node.ha.address), port
        family = socket.AF_INET6 if ":" in peer_host else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect((peer_host, peer_port))  # no packet: only picks the source address
            return str(probe.getsockname()[0]), port

    def own_fingerprint(self) -> str:
        webui = self.process.config.node.webui
        path = webui.certificate or self.process.state_dir / "webui-cert.pem"
        try:
            pem = Path(path).read_text(encoding="ascii")
        except OSError as exc:
            raise PairingError(f"cannot read this node's WebUI certificate {path}: {exc}") from None
        start = pem.index("-----BEGIN CERTIFICATE-----")
        end = pem.index("-----END CERTIFICATE-----") + len("-----END CERTIFICATE-----")
        return r.fingerprint(ssl.PEM_cert_to_DER_cert(pem[start:end]))

    def _store(self, record: PeerRecord) -> None:
        save_record(self.replicator.path, record)
        self.replicator.record, self.replicator.problem = record, None
        self.replicator.view = None
        self.replicator.refused = None
        self.replicator.conflicted = False
        self.replicator.wake()

    # --- the peer's side of pairing ----------------------------------------------------------

    def hello(self, nonce: str) -> dict[str, Any]:
        enabled = ha_enabled(self.process.config)
        now = time.monotonic()
        self._nonces = {n: t for n, t in self._nonces.items() if now - t < NONCE_LIFETIME}
        mine = secrets.token_hex(16)
        self._nonces[mine] = now
        ha = self.process.config.node.ha
        return {
            "enabled": enabled,
            # Bound to this node's own certificate: the pairing node checks it against the one
            # it sees, which a relay in the middle cannot make match (core/replication.py).
            "proof": r.proof(ha.secret, r.PROOF_PEER, nonce, self.own_fingerprint())
            if enabled and ha and ha.secret
            else None,
            "nonce": mine,
            "role": str(self.process.ha.role),
            "generation": self.replicator.generation,
            "digest": self.replicator.own_digest(),
            "services": len(self.process.config.virtual_services),
        }

    def join(self, body: dict[str, Any]) -> dict[str, Any]:
        secret = self._secret()
        nonce = str(body.get("nonce", ""))
        issued = self._nonces.pop(nonce, None)
        if issued is None or time.monotonic() - issued > NONCE_LIFETIME:
            raise PairingError("unknown or expired pairing nonce: start the pairing again")
        try:
            host = str(body["address"])
            port = int(body["port"])
            fingerprint = r.normal_fingerprint(str(body["fingerprint"]))
            token = str(body["token"])
        except (KeyError, TypeError, ValueError) as exc:
            raise PairingError(f"malformed join: {exc}") from None
        # Checked with this node's own certificate: the pairing node's proof covers the one it
        # saw, so a relay presenting another certificate fails here.
        fields = join_fields(self.own_fingerprint(), str(body["fingerprint"]), host, port, token)
        if not r.proof_ok(secret, r.PROOF_ACTIVE, nonce, str(body.get("proof", "")), *fields):
            raise PairingError(
                "the pairing node does not prove this node's node.ha.secret for this node's "
                "certificate and its join: the secrets differ, or something between the nodes "
                "presents its own certificate"
            )
        old = self.replicator.record
        if old is not None:  # the token minted for the previous pairing goes
            self.auth.revoke(old.given_token_id)
        info, minted = self.auth.create_token(PEER_TOKEN_NAME, UserRole.ADMIN, f"ha pairing {host}")
        record = PeerRecord(
            host=host,
            port=port,
            fingerprint=fingerprint,
            token=token,
            given_token_id=info.id,
            paired_at=_now(),
            generation=old.generation if old else self.replicator.generation,
            applied_revision=old.applied_revision if old else 0,
        )
        self._store(record)
        self.replicator.record_event(
            f"paired with {host}:{port} (certificate {fingerprint}) at its request; its config "
            "is replicated here"
        )
        return {"paired": True, "token": minted}

    # --- unpairing and takeover ------------------------------------------------------------

    async def unpair(self) -> dict[str, Any]:
        record = self.replicator.record
        if record is None:
            raise PairingError("this node is not paired")
        told = True
        note = ""
        try:
            answer = await record.client().post("/api/v1/ha/leave", {})
            if not answer.ok:
                told, note = False, f"{answer.status}: {answer.detail()}"
        except PeerError as exc:
            told, note = False, str(exc)
        self.forget()
        if told:
            self.replicator.record_event(f"unpaired from {record.host} (on both nodes)")
        else:
            self.replicator.record_event(
                f"unpaired from {record.host} here; the peer could not be told ({note}): "
                "run `pacslb ha unpair` on it too"
            )
        return {"unpaired": record.host, "peer_told": told, "note": note}

    def forget(self) -> None:
        """Remove the pairing here and revoke the token the peer was given."""
        record = self.replicator.record
        if record is None:
            return
        self.auth.revoke(record.given_token_id)
        remove_record(self.replicator.path)
        self.replicator.record = None
        self.replicator.view = None
        self.replicator.refused = None
        self.replicator.conflicted = False
        self.replicator.watch = r.SplitBrainWatch()

    def left(self) -> dict[str, Any]:
        record = self.replicator.record
        self.forget()
        if record is not None:
            self.replicator.record_event(f"unpaired by the peer {record.host}")
        return {"unpaired": True}

    async def takeover(self) -> dict[str, Any]:
        """Run on the passive node: ask the active peer to release the floating addresses
        (its POST /api/v1/ha/release) so that this node takes them over."""
        record = self.replicator.record
        if record is None:
            raise PairingError("this node is not paired: there is no peer to take over from")
        if self.process.ha.role is Role.ACTIVE:
            raise PairingError("this node is the active one already")
        try:
            answer = await record.client(timeout=10).post("/api/v1/ha/release", {})
        except PeerError as exc:
            raise PairingError(f"the peer {record.host} cannot be reached: {exc}") from None
        if not answer.ok:
            raise PairingError(f"the peer {record.host} did not release: {answer.detail()}")
        self.replicator.record_event(f"takeover: asked the peer {record.host} to release")
        return {"released_by": record.host, "answer": answer.body}
