"""Pairing of two HA nodes, as the guide's appendix does it: on the node that will be active,
add the peer by its address and an API credential of the peer.

The handshake (`pair`, run on this node, with `hello` and `join` answered by the peer):
1. TLS to the peer's WebUI; the SHA-256 fingerprint of the certificate it presents is pinned.
   The operator may pass the fingerprint to check (read on the peer's console); otherwise it
   is trusted on first use and printed, as SSH does at its first contact.
2. `POST /api/v1/ha/hello {nonce}` with the peer's token: the peer answers whether node.ha is
   enabled there and proves it holds the same node.ha.secret (HMAC of our nonce), with a nonce
   of its own. The secret never travels.
3. This node makes an admin API token for the peer (`ha-peer`) and sends `POST /api/v1/ha/join`:
   its address and port, its certificate's fingerprint, that token, and its own proof of the
   secret over the peer's nonce. The peer stores the pairing; so does this node.
Then replication pushes this node's state to the peer (a higher generation: see
core/replication.py). `unpair` removes the pairing on both nodes and revokes, on each, the
token the other was given.
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
from pacslb.core.auth import token_id
from pacslb.core.ha_role import Role, ha_enabled
from pacslb.errors import PacslbError

if TYPE_CHECKING:
    from pacslb.control.app import ControlProcess
    from pacslb.control.replica import Replicator

DEFAULT_PORT = 9443  # node.webui.listen's default port
PEER_TOKEN_NAME = "ha-peer"
NONCE_LIFETIME = 60.0  # seconds a `hello` nonce may wait for its `join`


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
        self, address: str, token: str, fingerprint: str | None = None
    ) -> dict[str, Any]:
        secret = self._secret()
        if self.process.ha.role is Role.PASSIVE:  # its config would replace the active one's
            raise PairingError(
                "this node is the passive one: pair from the active node (its configuration "
                "becomes the pair's)"
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
        if not r.proof_ok(secret, r.PROOF_PEER, nonce, str(body.get("proof", ""))):
            raise PairingError(
                f"the peer {host} does not have this node's node.ha.secret: set the same "
                "secret on both nodes"
            )
        own_host, own_port = self._own_address(host, port)
        own_print = self.own_fingerprint()
        old = self.replicator.record
        if old is not None:  # paired before (with this peer or another): its token goes
            self.auth.revoke(old.given_token_id)
        info, given = self.auth.create_token(PEER_TOKEN_NAME, UserRole.ADMIN, "ha pairing")
        join = {
            "address": own_host,
            "port": own_port,
            "fingerprint": own_print,
            "token": given,
            "nonce": body.get("nonce"),
            "proof": r.proof(secret, r.PROOF_ACTIVE, str(body.get("nonce", ""))),
        }
        try:
            await self._call(client, "/api/v1/ha/join", join)
        except PairingError:
            self.auth.revoke(info.id)
            raise
        peer_generation = int(body.get("generation") or 0)
        record = PeerRecord(
            host=host,
            port=port,
            fingerprint=seen,
            token=token.strip(),
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
            "proof": r.proof(ha.secret, r.PROOF_PEER, nonce)
            if enabled and ha and ha.secret
            else None,
            "nonce": mine,
            "role": str(self.process.ha.role),
            "generation": self.replicator.generation,
        }

    def join(self, body: dict[str, Any], bearer: str) -> dict[str, Any]:
        secret = self._secret()
        nonce = str(body.get("nonce", ""))
        issued = self._nonces.pop(nonce, None)
        if issued is None or time.monotonic() - issued > NONCE_LIFETIME:
            raise PairingError("unknown or expired pairing nonce: start the pairing again")
        if not r.proof_ok(secret, r.PROOF_ACTIVE, nonce, str(body.get("proof", ""))):
            raise PairingError("the pairing node does not have this node's node.ha.secret")
        try:
            host = str(body["address"])
            port = int(body["port"])
            fingerprint = r.normal_fingerprint(str(body["fingerprint"]))
            token = str(body["token"])
        except (KeyError, TypeError, ValueError) as exc:
            raise PairingError(f"malformed join: {exc}") from None
        old = self.replicator.record
        used = token_id(bearer) or ""
        if old is not None and old.given_token_id != used:
            self.auth.revoke(old.given_token_id)
        record = PeerRecord(
            host=host,
            port=port,
            fingerprint=fingerprint,
            token=token,
            given_token_id=used,
            paired_at=_now(),
            generation=old.generation if old else self.replicator.generation,
            applied_revision=old.applied_revision if old else 0,
        )
        self._store(record)
        self.replicator.record_event(
            f"paired with {host}:{port} (certificate {fingerprint}) at its request; its config "
            "is replicated here"
        )
        return {"paired": True}

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
