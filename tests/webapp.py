"""A ControlProcess with the web app in front of it, driven through Starlette's TestClient.

The process runs in the TestClient's own event loop (its portal), as it runs in uvicorn's loop
in `pacslb run`; nothing listens on a socket. Health checks are `none` or aimed at loopback."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from pacslb.control.app import ControlProcess
from pacslb.control.auth import AuthStore
from pacslb.control.store import read_config
from pacslb.control.web import create_app

PASSWORD = "correct horse battery"
READONLY_PASSWORD = "just looking here"

CONFIG = """version: 1
node:
  webui: {listen: "127.0.0.1:9443", session_lifetime: 600}
virtual_services:
  - label: Web
    vip: 127.0.0.30
    ports: [8080]
    mode: l7-http
    health_check: {type: none}
    real_servers:
      - {label: Srv1, address: 127.0.0.1, port: 18081}
      - {label: Srv2, address: 127.0.0.1, port: 18082}
  - label: DICOM
    vip: 127.0.0.31
    ports: [4000, 5000]
    mode: l7-tcp
    health_check: {type: none}
    real_servers:
      - {label: Pacs1, address: 127.0.0.1, port: 14000}
"""


@contextlib.contextmanager
def web_client(
    tmp_path: Path, text: str = CONFIG, **process_args: Any
) -> Iterator[tuple[TestClient, ControlProcess]]:
    path = tmp_path / "pacslb.yaml"
    path.write_text(text)
    state = tmp_path / "state"
    _, config = read_config(path)
    store = AuthStore(state)
    store.set_password("admin", PASSWORD, "admin")  # type: ignore[arg-type]
    store.set_password("viewer", READONLY_PASSWORD, "readonly")  # type: ignore[arg-type]
    process = ControlProcess(path, config, text, engines=(), state_dir=state, **process_args)
    app = create_app(process, store)
    with TestClient(app, base_url="https://testserver") as client:
        client.portal.call(process.start)  # type: ignore[union-attr]
        try:
            yield client, process
        finally:
            client.portal.call(process.stop)  # type: ignore[union-attr]


def login(client: TestClient, user: str = "admin", password: str = PASSWORD) -> str:
    """Log in through the API; the client keeps the cookie; returns the CSRF token."""
    r = client.post("/api/v1/session", json={"username": user, "password": password})
    assert r.status_code == 200, r.text
    token: str = r.json()["csrf_token"]
    return token


def headers(csrf: str) -> dict[str, Any]:
    return {"X-CSRF-Token": csrf}
