"""Validation at scale: seconds to validate a config of N services, each with one mistake.

    .venv/bin/python bench/validate_scale.py [--services 1000 2000]

Every service gets its own VIP and a health check with `rise: 0`, so every one is parsed,
checked against the others (VIP:port clashes) and reported with its label and line. This is
the work `pacslb check`, a reload and the API's validation do on one config. Timing only:
nothing here passes or fails (DESIGN §6).
"""

from __future__ import annotations

import argparse
import time

from pacslb.core.validate import load_text
from pacslb.errors import ConfigError


def config(n: int) -> str:
    services = "".join(
        f"  - {{label: S{i}, vip: 10.{i // 62500}.{i // 250 % 250}.{i % 250 + 1}, ports: [80], "
        "mode: l7-tcp, health_check: {type: connect, rise: 0}}\n"
        for i in range(n)
    )
    return "version: 1\nvirtual_services:\n" + services


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, nargs="+", default=[1000, 2000])
    args = parser.parse_args()
    for n in args.services:
        text = config(n)
        start = time.perf_counter()
        try:
            load_text(text)
            found = 0
        except ConfigError as exc:
            found = len(exc.problems)
        print(f"{n} services: {time.perf_counter() - start:.2f} s, {found} problems")


if __name__ == "__main__":
    main()
