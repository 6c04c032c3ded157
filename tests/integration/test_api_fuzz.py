"""The OpenAPI schema fuzzed with schemathesis: no request makes a 5xx, and the config in force
afterwards is still valid (bounded: a few examples per operation, well under a minute).

Cases are generated from the app's own schema and sent with the same ASGI client the control
process runs behind (its event loop), as an admin token. Generated addresses are moved onto
loopback and health checks set to `none` first, so that no fuzzed config makes pacslb probe or
bind anything off this machine."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import hypothesis
import schemathesis
from hypothesis import HealthCheck, settings
from tests.webapp import headers, login, web_client

from pacslb.control.store import read_config
from pacslb.core.validate import dump_text, load_text

EXAMPLES = 30
_flip = itertools.cycle([0, 1, 1])
_loopback = itertools.cycle(f"127.0.{i}.{j}" for i in range(2, 4) for j in range(1, 250))


def loopback_only(value: Any) -> Any:
    """Every address in a generated body on 127.0.x.x; every health check `none`."""
    if isinstance(value, list):
        return [loopback_only(v) for v in value]
    if not isinstance(value, dict):
        return value
    out = {k: loopback_only(v) for k, v in value.items()}
    for key in ("vip", "address", "peer"):
        if key in out:
            out[key] = next(_loopback)
    if "health_check" in out:
        out["health_check"] = {"type": "none"}
    if "real_servers" in out or "vip" in out:  # a service: checks default to connect
        out["health_check"] = {"type": "none"}
    return out


def test_openapi_fuzz_no_5xx_and_config_stays_valid(tmp_path: Path) -> None:
    with web_client(tmp_path) as (client, process):
        csrf = login(client)
        token = client.post(
            "/api/v1/tokens", json={"name": "fuzz", "role": "admin"}, headers=headers(csrf)
        ).json()["token"]
        client.cookies.clear()
        auth = {"Authorization": f"Bearer {token}"}
        schema = schemathesis.openapi.from_dict(client.app.openapi())  # type: ignore[attr-defined]
        operations = [result.ok() for result in schema.get_all_operations()]
        assert len(operations) >= 25
        failures: list[str] = []
        seen: dict[int, int] = {}

        for operation in operations:
            if operation.path == "/api/v1/tokens/{token_id}" and operation.method == "delete":
                continue  # would revoke the fuzzer's own token

            @hypothesis.given(case=operation.as_strategy())
            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                database=None,
                derandomize=True,
                suppress_health_check=list(HealthCheck),
            )
            def run(case: Any) -> None:
                params = case.path_parameters or {}
                if "service" in params and next(_flip):  # half the time, a service that exists
                    services = process.config.virtual_services
                    vs = services[next(_flip) % len(services)] if services else None
                    params["service"] = vs.label if vs else "Web"
                    if "server" in params and vs is not None and vs.real_servers:
                        params["server"] = vs.real_servers[0].label
                kwargs = case.as_transport_kwargs(base_url="https://testserver")
                body = kwargs.pop("json", None)
                r = client.request(
                    kwargs["method"],
                    kwargs["url"],
                    params=kwargs.get("params"),
                    headers={**auth, "Content-Type": "application/json"},
                    json=loopback_only(body),
                )
                seen[r.status_code] = seen.get(r.status_code, 0) + 1
                if r.status_code >= 500:
                    failures.append(f"{kwargs['method']} {kwargs['url']} {body!r}: {r.status_code}")

            run()
        print(f"statuses: {dict(sorted(seen.items()))}; revisions {process.revision}")
        assert not failures, "\n".join(failures[:10])
        # The config in force and the file on disk are valid, and they are the same config.
        text = process.config_path.read_text()
        assert load_text(dump_text(process.config)) is not None
        assert read_config(process.config_path)[1] == process.config, text
        assert len(process.store.revisions()) >= 1
