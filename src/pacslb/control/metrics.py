"""/metrics in the Prometheus text format, read from the control process at scrape time.

A custom collector on a registry of its own (not the library's global one): every scrape asks
`status()` and the engines' counters, so nothing is double-counted and nothing goes stale.

Who may scrape: any logged-in user or API token, readonly included (`Authorization: Bearer`),
or anyone from a network listed in `node.webui.metrics_allow` (for a Prometheus server that is
set up once and should not hold a token).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from pacslb.core.state import AdminState, Health

if TYPE_CHECKING:
    from pacslb.control.app import ControlProcess

RS = ["service", "server"]


class PacslbCollector(Collector):
    def __init__(self, process: ControlProcess) -> None:
        self.process = process

    def collect(self) -> Iterator[Metric]:
        status = self.process.status()
        counters = self.process.counters()
        up = GaugeMetricFamily(
            "pacslb_real_server_up", "1 unless the health checks say down", labels=RS
        )
        health = GaugeMetricFamily(
            "pacslb_real_server_health", "1 for the server's health state", labels=[*RS, "state"]
        )
        admin = GaugeMetricFamily(
            "pacslb_real_server_admin_state", "1 for the admin state", labels=[*RS, "state"]
        )
        weight = GaugeMetricFamily(
            "pacslb_real_server_effective_weight", "weight the scheduler uses now", labels=RS
        )
        active = GaugeMetricFamily(
            "pacslb_real_server_active_connections", "connections open now", labels=RS
        )
        total = CounterMetricFamily(
            "pacslb_real_server_connections", "connections since the engine started", labels=RS
        )
        bytes_in = CounterMetricFamily(
            "pacslb_real_server_bytes_in", "bytes client -> server", labels=RS
        )
        bytes_out = CounterMetricFamily(
            "pacslb_real_server_bytes_out", "bytes server -> client", labels=RS
        )
        packets_in = CounterMetricFamily(
            "pacslb_real_server_packets_in", "packets client -> server (layer 4)", labels=RS
        )
        packets_out = CounterMetricFamily(
            "pacslb_real_server_packets_out", "packets server -> client (NAT, SNAT)", labels=RS
        )
        failures = CounterMetricFamily(
            "pacslb_real_server_connect_failures",
            "connects to the server that failed (built-in proxy)",
            labels=RS,
        )
        requests = CounterMetricFamily(
            "pacslb_real_server_requests", "HTTP requests forwarded (l7-http)", labels=RS
        )
        retries = CounterMetricFamily(
            "pacslb_real_server_retries",
            "l7-http requests sent again to another real server after this one failed before "
            "any response byte (a resend after the server closed a kept-alive connection as it "
            "was reused is not counted)",
            labels=RS,
        )
        ejections = CounterMetricFamily(
            "pacslb_real_server_ejections",
            "times passive health took the server out of rotation (built-in proxy)",
            labels=RS,
        )
        ejected = GaugeMetricFamily(
            "pacslb_real_server_ejected",
            "proxy workers in which passive health has the server out of rotation now",
            labels=RS,
        )
        responses = CounterMetricFamily(
            "pacslb_real_server_responses",
            "HTTP responses by status class (l7-http)",
            labels=[*RS, "class"],
        )
        latency = GaugeMetricFamily(
            "pacslb_real_server_check_latency_seconds", "duration of the last check", labels=RS
        )
        vs_up = GaugeMetricFamily(
            "pacslb_virtual_service_available",
            "1 if at least one real server takes new connections",
            labels=["service", "vip"],
        )
        vs_active = GaugeMetricFamily(
            "pacslb_virtual_service_active_connections", "connections open now", labels=["service"]
        )
        no_server = CounterMetricFamily(
            "pacslb_virtual_service_no_server_responses",
            "l7-http requests the proxy answered 503: no real server could take them",
            labels=["service"],
        )
        for svc in status["services"]:
            service = svc["label"]
            no_server.add_metric([service], float(svc.get("no_server", 0)))
            available = 0
            open_now = 0
            for rs in svc["real_servers"]:
                labels = [service, rs["label"]]
                up.add_metric(labels, 0.0 if rs["health"] == Health.DOWN else 1.0)
                for state in Health:
                    health.add_metric([*labels, state.value], float(rs["health"] == state))
                for adm in AdminState:
                    admin.add_metric([*labels, adm.value], float(rs["admin"] == adm))
                weight.add_metric(labels, float(rs["effective_weight"]))
                available |= rs["effective_weight"] > 0
                count = counters.get((service, rs["label"]))
                if count is not None:
                    active.add_metric(labels, float(count.active))
                    total.add_metric(labels, float(count.total))
                    bytes_in.add_metric(labels, float(count.bytes_in))
                    bytes_out.add_metric(labels, float(count.bytes_out))
                    packets_in.add_metric(labels, float(count.packets_in))
                    packets_out.add_metric(labels, float(count.packets_out))
                    failures.add_metric(labels, float(count.connect_failures))
                    requests.add_metric(labels, float(count.requests))
                    retries.add_metric(labels, float(count.retries))
                    ejections.add_metric(labels, float(count.ejections))
                    ejected.add_metric(labels, float(count.ejected))
                    for cls, n in sorted(count.responses.items()):
                        responses.add_metric([*labels, cls], float(n))
                    open_now += count.active
                if rs["last_check"] is not None:
                    latency.add_metric(labels, rs["last_check"]["latency_ms"] / 1000)
            vs_up.add_metric([service, svc["vip"]], float(available))
            vs_active.add_metric([service], float(open_now))
        yield from (up, health, admin, weight, active, total, bytes_in, bytes_out)
        yield from (packets_in, packets_out, failures, requests, retries, ejections, ejected)
        yield from (responses, latency)
        yield from (vs_up, vs_active, no_server)
        yield from _dicom(status["services"])
        yield from self._engines()
        yield from self._workers(status.get("proxy"))
        if getattr(self.process, "ha_sync", None) is not None:  # HA state sync and conntrackd
            from pacslb.control.hasync import metrics as ha_sync_metrics

            yield from ha_sync_metrics(self.process.ha_sync)
        revision = GaugeMetricFamily("pacslb_config_revision", "config revision in force")
        revision.add_metric([], float(status["revision"]))
        yield revision
        ready = GaugeMetricFamily(
            "pacslb_ready",
            "1 when start-up has finished and every engine's last apply succeeded "
            "(status: not_ready says why not)",
        )
        ready.add_metric([], float(status["ready"]))
        degraded = GaugeMetricFamily(
            "pacslb_degraded",
            "1 while what runs is not what the config file says (a broken file at start: "
            "the last good revision runs; a service `run --degraded` could not place; "
            "status: degraded says which)",
        )
        degraded.add_metric([], float(bool(status["degraded"])))
        yield from (ready, degraded, _ha_role(status["ha"]["role"]))
        yield from self._ha(status.get("ha"))

    def _ha(self, ha: dict[str, Any] | None) -> Iterator[Metric]:
        """Replication of an HA pair (control/replica.py); nothing on a node without node.ha."""
        if ha is None or not (ha["enabled"] or ha["paired"]):
            return
        peer = ha["peer"] or {}
        reachable = GaugeMetricFamily(
            "pacslb_ha_peer_reachable",
            "1 while the paired peer answers (0: unreachable or unpaired)",
        )
        reachable.add_metric([], float(bool(peer.get("reachable"))))
        behind = GaugeMetricFamily(
            "pacslb_ha_revisions_behind", "revisions of this node the peer has not applied yet"
        )
        behind.add_metric([], float(ha["replication"]["behind"]))
        in_sync = GaugeMetricFamily(
            "pacslb_ha_in_sync", "1 when the peer holds the same services and admin states"
        )
        in_sync.add_metric([], float(ha["replication"]["state"] == "in-sync"))
        split = GaugeMetricFamily(
            "pacslb_ha_split_brain", "1 while both nodes of the pair say they are active"
        )
        split.add_metric([], float(ha["split_brain"]))
        conflict = GaugeMetricFamily(
            "pacslb_ha_conflict",
            "1 while both nodes changed since they last agreed (resolve: pacslb ha resolve)",
        )
        conflict.add_metric([], float(bool(ha.get("conflict"))))
        yield from (reachable, behind, in_sync, split, conflict)

    def _engines(self) -> Iterator[Metric]:
        applied = GaugeMetricFamily(
            "pacslb_engine_last_apply_timestamp_seconds",
            "unix time of the engine's last successful apply",
            labels=["engine"],
        )
        failing = GaugeMetricFamily(
            "pacslb_engine_failing", "1 if the engine's last apply failed", labels=["engine"]
        )
        error = GaugeMetricFamily(
            "pacslb_engine_last_error_info",
            "the engine's last apply error (value: unix time of the error)",
            labels=["engine", "error"],
        )
        for engine in self.process.engines:
            record = self.process.engine_records.get(engine.name)
            if record is None:
                continue
            if record.applied_at is not None:
                applied.add_metric([engine.name], record.applied_at)
            failing.add_metric([engine.name], float(record.error is not None))
            if record.error is not None and record.error_at is not None:
                error.add_metric([engine.name, record.error[:200]], record.error_at)
        yield from (applied, failing, error)

    def _workers(self, proxy: dict[str, Any] | None) -> Iterator[Metric]:
        """The proxy's worker processes: how many serve, and how often one was replaced."""
        if proxy is None:
            return
        up = GaugeMetricFamily(
            "pacslb_proxy_workers_up", "proxy worker processes that answer the watchdog"
        )
        up.add_metric([], float(sum(w["state"] == "up" for w in proxy["workers"])))
        configured = GaugeMetricFamily(
            "pacslb_proxy_workers",
            "proxy worker processes (node.proxy.workers; 0 while no service uses the proxy)",
        )
        configured.add_metric([], float(len(proxy["workers"])))
        restarts = CounterMetricFamily(
            "pacslb_proxy_worker_restarts",
            "proxy workers replaced since pacslb started, by reason (crashed: exited or "
            "killed; hung: stopped answering and was killed)",
            labels=["reason"],
        )
        for reason, n in sorted(proxy["restarts"].items()):
            restarts.add_metric([reason], float(n))
        yield from (up, configured, restarts)


# l7-dicom figures (control/status.py dicom_summary): name, help, counter or gauge.
_DICOM_METRICS = (
    ("associations", "associations", "A-ASSOCIATE-RQs forwarded to a real server", True),
    ("assoc_active", "associations_active", "associations open now", False),
    ("assoc_rejected", "associations_rejected", "associations refused with A-ASSOCIATE-RJ", True),
    ("assoc_aborted", "associations_aborted", "associations ended by an A-ABORT", True),
    ("pdata_pdus", "pdata_pdus", "P-DATA-TF PDUs relayed, both directions", True),
    (
        "assoc_seconds",
        "association_seconds",
        "durations of the associations that ended, summed (÷ ended associations = the mean)",
        True,
    ),
    ("bytes_in", "bytes_in", "bytes client -> server", True),
    ("bytes_out", "bytes_out", "bytes server -> client", True),
)


def _dicom(services: list[dict[str, Any]]) -> Iterator[Metric]:
    """Per l7-dicom service: each figure per real server, per calling AE title, and the
    refusals before any server was chosen (unknown called AE, no usable server, a malformed
    or late request)."""
    dicom = [svc for svc in services if svc.get("dicom")]
    if not dicom:
        return
    for key, name, text, counter in _DICOM_METRICS:
        family = CounterMetricFamily if counter else GaugeMetricFamily
        per_server = family(f"pacslb_dicom_{name}", f"l7-dicom: {text}", labels=RS)
        per_ae = family(
            f"pacslb_dicom_calling_ae_{name}",
            f"l7-dicom: {text}, per calling AE title",
            labels=["service", "calling_ae"],
        )
        for svc in dicom:
            for rs in svc["real_servers"]:
                per_server.add_metric([svc["label"], rs["label"]], float(rs["dicom"][key]))
            for ae in svc["dicom"]["calling_aes"]:
                per_ae.add_metric([svc["label"], ae["calling_ae"]], float(ae[key]))
        yield from (per_server, per_ae)
    refused = CounterMetricFamily(
        "pacslb_dicom_refused",
        "l7-dicom: associations the proxy answered itself, before any real server "
        "(answer: rejected = A-ASSOCIATE-RJ, aborted = A-ABORT)",
        labels=["service", "answer"],
    )
    for svc in dicom:
        for answer, n in sorted(svc["dicom"]["no_server"].items()):
            refused.add_metric([svc["label"], answer], float(n))
    yield refused


def _ha_role(current: str) -> Metric:
    """1 for this node's HA role (active holds the floating addresses), 0 for the others."""
    from pacslb.core.ha_role import Role

    role = GaugeMetricFamily(
        "pacslb_ha_role",
        "1 for this node's role in an HA pair (standalone without one)",
        labels=["role"],
    )
    for name in Role:
        role.add_metric([str(name)], float(str(name) == current))
    return role


def registry(process: ControlProcess) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(PacslbCollector(process))
    return reg


def exposition(reg: CollectorRegistry) -> bytes:
    return generate_latest(reg)
