from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack

import pytest

from tests.peers.procs import free_port, http_peer


@pytest.fixture
def backends(request: pytest.FixtureRequest) -> Iterator[list[int]]:
    """Two real HTTP servers on the test module's HOST: /check answers OK, /who their name."""
    host = request.module.HOST
    ports = [free_port(host), free_port(host)]
    with ExitStack() as stack:
        for i, port in enumerate(ports, start=1):
            stack.enter_context(http_peer(host, port, "/check=200:OK", f"/who=200:server{i}"))
        yield ports
