"""`pacslb profile empty`: a node with no virtual service yet, as the package installs it.

The WebUI is on (services are added there, through the REST API, or by editing the file and
`pacslb reload`); nothing is probed and nothing is bound but the WebUI until a service exists.
"""

from __future__ import annotations

import json


def render(state_dir: str | None, webui_listen: str | None) -> str:
    listen = webui_listen or "0.0.0.0:9443"
    state = state_dir or "/var/lib/pacslb"
    # The header stays true once services are added (the WebUI's first-run wizard and every
    # change edit this file in place, keeping its comments).
    return f"""# pacslb configuration, as the package installs it (`pacslb profile empty`).
#
# Add services in the WebUI (https://{listen.replace("0.0.0.0", "THIS-HOST")}/), through the
# REST API, or here followed by `pacslb reload` (`pacslb check FILE` finds every problem first).
# `pacslb profile mckesson --help` writes the McKesson deployment guide's five services.
version: 1
node:
  webui: {{listen: {json.dumps(listen)}}}
  state_dir: {json.dumps(state)}
virtual_services: []
"""
