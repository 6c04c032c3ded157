"""The `pacslb` command line: a thin shell that parses arguments and calls the modules."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pacslb import __version__
from pacslb.config import Config, config_json_schema
from pacslb.errors import ConfigError, EngineError, PacslbError, Problem

if TYPE_CHECKING:
    from pacslb.core.doctor import Reach
    from pacslb.core.plan import Plan
    from pacslb.engines.base import Engine

EXIT_OK, EXIT_INVALID = 0, 1
DEFAULT_STATE_DIR = Path(os.environ.get("PACSLB_STATE_DIR", "/var/lib/pacslb"))


def load_config_file(path: Path) -> Config:
    """Read and validate a config file; ConfigError lists every problem."""
    from pacslb.control.store import read_config

    return read_config(path)[1]


# --- commands ----------------------------------------------------------------------------


def cmd_check(args: argparse.Namespace) -> int:
    try:
        if str(args.file) == "-":  # `pacslb profile ... | pacslb check -`
            from pacslb.core.validate import load_text

            config = load_text(sys.stdin.read(), "<stdin>", lambda p: p.is_file())
        else:
            config = load_config_file(args.file)
    except ConfigError as exc:
        if args.json:
            problems = [p.to_json() for p in exc.problems]
            print(json.dumps({"valid": False, "source": exc.source, "problems": problems}))
        else:
            print(exc, file=sys.stderr)
        return EXIT_INVALID
    servers = sum(len(vs.real_servers) for vs in config.virtual_services)
    base = Path.cwd() if str(args.file) == "-" else args.file.resolve().parent
    warnings = secret_warnings(config, base)
    if args.json:
        found = [w.to_json() for w in warnings]
        answer = {"valid": True, "source": str(args.file), "problems": [], "warnings": found}
        print(json.dumps(answer))
    else:
        print(
            f"{args.file}: OK: {len(config.virtual_services)} virtual services, "
            f"{servers} real servers"
        )
        for warning in warnings:
            print(f"  warning: {warning}", file=sys.stderr)
    return EXIT_OK


def secret_warnings(config: Config, base: Path) -> list[Problem]:
    """Secret files others may read: a warning, not a problem (a TLS key is not refused for
    its mode either; the config is right, the file's mode is the host's business)."""
    from pacslb.core.validate_alerts import secret_file_warnings

    def mode_of(path: Path) -> int | None:
        try:
            return (path if path.is_absolute() else base / path).stat().st_mode
        except OSError:
            return None  # gone since the check: `no such file` was the validator's to say

    alerts = config.node.alerts
    return [] if alerts is None else secret_file_warnings(alerts.model_dump(), mode_of)


def _pairs(items: Sequence[str], option: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key or not value:
            raise SystemExit(f"pacslb: {option} {item!r}: expected KEY=ADDRESS[,ADDRESS...]")
        out[key.strip()] = [v.strip() for v in value.split(",") if v.strip()]
    return out


def cmd_profile(args: argparse.Namespace) -> int:
    from pacslb.profiles import empty, mckesson

    if args.name == "empty":  # what the Debian package installs: no service yet, the WebUI on
        return _write_profile(args, empty.render(args.state_dir, args.webui_listen), [])
    vips = {k: v[0] for k, v in _pairs(args.vip, "--vip").items()}
    rips = _pairs(args.rip, "--rip")
    try:
        data, examples = mckesson.build(
            args.variant,
            vips,
            rips,
            dicom_check=args.dicom_check,
            called_ae=args.called_ae,
            dicom_mode=args.dicom_mode,
            state_dir=args.state_dir,
            webui_listen=args.webui_listen,
        )
    except (ValueError, ConfigError) as exc:
        print(f"pacslb profile: {exc}", file=sys.stderr)
        return EXIT_INVALID
    return _write_profile(
        args, mckesson.render(data, args.variant, examples, args.dicom_check), examples
    )


def _write_profile(args: argparse.Namespace, text: str, examples: list[str]) -> int:
    if args.output:
        from pacslb.control.store import write_atomic

        write_atomic(Path(args.output), text.encode())
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
        sys.stdout.flush()  # before the note on stderr, so a terminal shows them in order
    if examples:
        print(
            "note: example addresses used for " + ", ".join(examples) + ": replace them",
            file=sys.stderr,
        )
    return EXIT_OK


def cmd_plan(args: argparse.Namespace) -> int:
    from pacslb.control.store import AdminStateStore
    from pacslb.core.plan import build_plan

    try:
        config = load_config_file(args.file)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_INVALID
    admin = AdminStateStore(args.state_dir / "admin-state.json").all() if args.state_dir else {}
    plan = build_plan(config, admin=admin)
    reach = _interfaces(plan) if args.routes else {}
    if args.json:
        data = json.loads(plan.to_json())
        if args.routes:  # beside the Plan (the engines' contract), not inside it
            data["interfaces"] = {a: dataclasses.asdict(r) for a, r in reach.items()}
        sys.stdout.write(json.dumps(data) + "\n")
        return EXIT_OK
    for svc in plan.services:
        ports = ",".join(str(p) for p in svc.ports)
        print(
            f"{svc.label}  {svc.vip}:{ports}/{svc.protocol}  {svc.mode}  {svc.scheduler}  "
            f"persistence={svc.persistence.kind}"
        )
        if args.routes:
            print(f"  VIP {reach[svc.vip].text(vip=True, kernel=svc.mode.is_kernel)}")
        for rs in svc.real_servers:
            port = f":{rs.port}" if rs.port else ""
            where = f"  {reach[rs.address].text()}" if args.routes else ""
            print(
                f"  {rs.label:<32} {rs.address}{port:<6} weight={rs.weight:<5} "
                f"effective={rs.effective_weight:<5} {rs.admin} {rs.health}{where}"
            )
    return EXIT_OK


def cmd_config(args: argparse.Namespace) -> int:
    from pacslb.control.store import ConfigStore

    store = ConfigStore(args.state_dir)
    if args.action == "list":
        revisions = store.revisions()
        if not revisions:
            print(f"no config revisions in {Path(args.state_dir)} (is it the state directory?)")
        for rev in revisions:
            print(f"{rev.number:>6}  {rev.created}  {rev.author or '-':<12} {rev.comment}")
    elif args.action == "show":
        sys.stdout.write(store.text(args.a))
    elif args.action == "diff":
        sys.stdout.write(store.diff(args.a, args.b))
    else:  # rollback, save: through the running pacslb when one runs
        from pacslb.cli_config import cmd_write

        return cmd_write(args)
    return EXIT_OK


def _state_dir(args: argparse.Namespace) -> Path:
    """--state-dir, else the config's node.state_dir (--config), else $PACSLB_STATE_DIR."""
    if getattr(args, "state_dir", None):
        return Path(args.state_dir)
    if getattr(args, "config", None):
        return load_config_file(Path(args.config)).node.state_dir
    return DEFAULT_STATE_DIR


def data_planes(state_dir: Path, config: Config) -> list[Engine]:
    """The kernel engine (layer 4; idle, needing no root, while no service uses it) and the
    built-in proxy (layer 7; starts its processes only when a service needs them)."""
    from pacslb.core.ha_role import ha_enabled
    from pacslb.engines.kernel import KernelEngine
    from pacslb.engines.proxy import ProxyEngine

    proxy = config.node.proxy
    kernel = KernelEngine(state_dir, place_vips=not ha_enabled(config))  # HA: keepalived's
    return [kernel, ProxyEngine(state_dir, proxy.workers, proxy.spare)]


def cmd_run(args: argparse.Namespace) -> int:
    import asyncio

    from pacslb.control import doctor, startup
    from pacslb.control.app import ControlProcess
    from pacslb.control.serve import serve
    from pacslb.control.store import read_config

    broken: startup.BrokenFile | None = None
    try:
        text, config = read_config(args.file)
        state_dir = Path(args.state_dir) if args.state_dir else config.node.state_dir
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        state_dir = Path(args.state_dir) if args.state_dir else startup.state_dir_of(args.file)
        recovered = startup.last_good(args.file, state_dir, exc)
        if recovered is None:
            print(
                f"nothing was started: no good config revision to start from in "
                f"{state_dir / 'revisions'}",
                file=sys.stderr,
            )
            return EXIT_INVALID
        text, config, broken = recovered
        print(
            f"pacslb run: STARTING FROM REVISION {broken.revision}, the last good config, "
            f"because {args.file} has the problems above; fix it, then `pacslb reload`",
            file=sys.stderr,
        )
    problems = startup.blocking(doctor.placement(config))
    if problems:
        count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
        print(
            f"pacslb run: {count}: a service cannot be placed on this host\n"
            + startup.problem_lines(problems),
            file=sys.stderr,
        )
        if not args.degraded:
            print(
                "nothing was started. Fix them (`pacslb doctor FILE` checks again), or start "
                "with --degraded: what can run runs, and status, /metrics and the WebUI say "
                "degraded, naming each problem, until a reload finds none (and not ready "
                "while an engine fails to apply the config)",
                file=sys.stderr,
            )
            return EXIT_INVALID
    from pacslb.proxy.budget import raise_descriptor_limit

    # Checks and proxied connections each hold descriptors; the proxy workers inherit it.
    raise_descriptor_limit()

    async def main() -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        engines = data_planes(state_dir, config)
        process = ControlProcess(
            args.file,
            config,
            text,
            engines=engines,
            state_dir=state_dir,
            broken_file=broken,
            placement_problems=[f"{f.subject}: {f.message}" for f in problems],
        )
        await serve(process)

    try:
        import uvloop

        uvloop.run(main())
    except ImportError:  # pragma: no cover - uvloop is a dependency; this is for odd platforms
        asyncio.run(main())
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    from pacslb.control.local import request
    from pacslb.control.status_text import status_text

    status = request(_state_dir(args), {"cmd": "status"})
    print(json.dumps(status, indent=2) if args.json else status_text(status))
    return EXIT_OK


def cmd_admin(args: argparse.Namespace) -> int:
    from pacslb.control.local import request

    payload = {
        "cmd": "set-admin",
        "service": args.service,
        "server": args.server,
        "state": args.command,
        "by": os.environ.get("SUDO_USER") or os.environ.get("USER", "cli"),
    }
    result = request(_state_dir(args), payload)
    print(f"{result['service']}/{result['server']}: {result['previous']} -> {result['state']}")
    return EXIT_OK


def cmd_events(args: argparse.Namespace) -> int:
    from pacslb.control.events import Event, EventLog
    from pacslb.control.local import NotRunning, request

    payload = {"cmd": "events", "kind": args.kind, "service": args.service, "limit": args.limit}
    state_dir = _state_dir(args)
    try:
        events = [Event(**raw) for raw in request(state_dir, payload)]
    except NotRunning:
        # Stopped: the log is on disk (how it stopped is often the question).
        if not (state_dir / "events.jsonl").exists():
            raise
        log = EventLog(state_dir / "events.jsonl")
        events = log.query(args.kind, args.service, None, args.limit)
    for event in events:
        print(event)
    return EXIT_OK


def cmd_teardown(args: argparse.Namespace) -> int:
    """Layer 4 forwarding outlives `pacslb run` on purpose (and proxy workers outlive
    `pacslb stop --keep-data-plane`); this ends both for good."""
    from pacslb.control.local import NotRunning, request
    from pacslb.engines.kernel import KernelEngine
    from pacslb.engines.proxy import stop_workers

    state_dir = _state_dir(args)
    try:
        request(state_dir, {"cmd": "status"}, timeout=2.0)
    except NotRunning:
        pass
    else:
        raise PacslbError(f"pacslb is running with {state_dir}: stop it first")
    done = stop_workers(state_dir)
    from pacslb.control.ha import stop_left_keepalived

    done += stop_left_keepalived(state_dir)  # left holding the addresses by --keep-data-plane
    try:
        done += KernelEngine(state_dir).teardown()
    except EngineError:
        if os.geteuid() == 0:
            raise
        done.append("nftables not checked: only root can read or delete the pacslb tables")
    print("\n".join(done) if done else "nothing to remove: no pacslb tables or workers here")
    return EXIT_OK


STOP_TIMEOUT = 30.0


def cmd_stop(args: argparse.Namespace) -> int:
    """Stop the running pacslb and wait until its process has exited."""
    import select

    from pacslb.control.local import NotRunning, request
    from pacslb.engines.unix_peer import listener

    state_dir = _state_dir(args)
    # Held by a pidfd from before the stop: its pid, once free, may be given to another
    # process (or name another one here, from a pid namespace), which a poll of it would wait for.
    found = listener(state_dir / "control.sock")  # EngineError: one listens but accepts nothing
    if found is None:
        raise NotRunning(
            f"no pacslb listens at {state_dir}: it is not running, or runs with another "
            "--state-dir (or --config)"
        )
    pid, pidfd = found
    try:
        result = request(state_dir, {"cmd": "stop", "keep_data_plane": args.keep_data_plane})
        # The control socket closes first; the engines (workers stopped, each within 10 s, in
        # parallel) and the process exit come after: wait for the process, not for the socket.
        poll = select.poll()
        poll.register(pidfd, select.POLLIN)  # readable once the process has exited
        if not poll.poll(STOP_TIMEOUT * 1000):
            raise PacslbError(
                f"pacslb (pid {pid}) is still running {STOP_TIMEOUT:g} s after it was asked to "
                f"stop; see `pacslb events` and its log; `kill {pid}` stops it as this would"
            )
    finally:
        os.close(pidfd)
    if result["data_plane"] == "kept":
        print(
            f"pacslb (pid {pid}) stopped; its data plane goes on forwarding. "
            "`pacslb run` adopts it; `pacslb teardown` stops it."
        )
    else:
        print(f"pacslb (pid {pid}) stopped")
    return EXIT_OK


def cmd_reload(args: argparse.Namespace) -> int:
    from pacslb.control.local import request

    result = request(_state_dir(args), {"cmd": "reload"})
    if result.get("changed", True):
        print(f"applied revision {result['revision']}")
    else:
        print(f"nothing changed: the file holds revision {result['revision']}, the config in force")
    return EXIT_OK


def cmd_passwd(args: argparse.Namespace) -> int:
    """Set a WebUI/API user's password (stored as a scrypt hash); ends that user's sessions."""
    import getpass

    from pacslb.control.auth import AuthStore
    from pacslb.core.auth import Role, password_problem

    state_dir = _state_dir(args)
    named = bool(args.state_dir or args.config)
    if not named and not state_dir.is_dir():
        # The default (/var/lib/pacslb, made by the package) missing: no node was set up here,
        # and a reader who left out --state-dir would make one by mistake. A directory named
        # on the command line is made, so a password can be set before the first start.
        print(
            f"pacslb passwd: no state directory {state_dir} (pacslb is not installed or has "
            "not run there); name the node's with --state-dir DIR or --config FILE; nothing "
            "changed",
            file=sys.stderr,
        )
        return EXIT_INVALID
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass(f"new password for {args.user}: ")
        if getpass.getpass("again: ") != password:
            print("pacslb passwd: the passwords differ; nothing changed", file=sys.stderr)
            return EXIT_INVALID
    problem = password_problem(password)
    if problem:
        print(f"pacslb passwd: {problem}; nothing changed", file=sys.stderr)
        return EXIT_INVALID
    state_dir.mkdir(parents=True, exist_ok=True)
    role = Role(args.role) if args.role else None
    AuthStore(state_dir).set_password(args.user, password, role)
    print(f"password of {args.user} changed in {state_dir}")
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    if args.fail or args.recover:  # the running demo's server fails (again: recovers)
        from pacslb.control.demo import cli as demo_cli

        return demo_cli(Path(args.state_dir), args.fail, args.recover)
    from pacslb.profiles import demo

    demo.run(Path(args.state_dir), args.webui_listen, args.net, data_planes)
    return EXIT_OK


def cmd_proxy(args: argparse.Namespace) -> int:
    from pacslb.proxy.server import main as proxy_main

    proxy_main(Path(args.socket))
    return EXIT_OK


def _interfaces(plan: Plan) -> dict[str, Reach]:
    """How this host reaches each VIP and real server (its routing table, `ip route get`)."""
    from pacslb.control.doctor import reach
    from pacslb.engines.host import Host

    host = Host()
    addresses = [a for s in plan.services for a in (s.vip, *(r.address for r in s.real_servers))]
    return {a: reach(a, host) for a in dict.fromkeys(addresses)}


def cmd_realserver(args: argparse.Namespace) -> int:
    from pacslb.core import realserver

    if args.config:
        config = load_config_file(Path(args.config))
        nat = realserver.nat_servers(config)
        gateways = {n.address: args.gateway for n in nat if args.gateway}
        if nat and not args.gateway:  # an HA pair's floating gateway, else the LB's own
            gateways = realserver.floating_gateways(config)  # address on the segment
            from pacslb.control.doctor import reach
            from pacslb.engines.host import Host

            for n in nat:
                if n.address in gateways:
                    continue
                r = reach(n.address, Host())
                if r.source and not (r.gateway or r.local or r.error):
                    gateways[n.address] = r.source
        text = realserver.for_config(
            realserver.dr_servers(config),
            args.os,
            args.interface,
            args.lan_adapter,
            args.loopback_adapter,
            nat=nat,
            gateways=gateways,
            snat=realserver.snat_services(config),
            proxied=realserver.proxied_services(config),
        )
    elif not args.vip:
        print("pacslb realserver: give --vip ADDR (one or more) or --config FILE", file=sys.stderr)
        return EXIT_INVALID
    elif args.os == "linux":
        text = realserver.linux(args.vip, args.interface)
    else:
        text = realserver.windows(args.vip, args.lan_adapter, args.loopback_adapter)
    sys.stdout.write(text)
    return EXIT_OK


def cmd_doctor(args: argparse.Namespace) -> int:
    from pacslb.control import doctor
    from pacslb.core import doctor as report

    config = load_config_file(args.file) if args.file else None
    findings = doctor.run(config)
    if args.json:
        print(json.dumps(report.to_json(findings), indent=2))
    else:
        sys.stdout.write(report.table(findings))
    return report.exit_code(findings)


def cmd_schema(args: argparse.Namespace) -> int:
    print(json.dumps(config_json_schema(), indent=2, sort_keys=True))
    return EXIT_OK


# --- parser ------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pacslb", description="Load balancer for clinical imaging (PACS, DICOM, web)."
    )
    parser.add_argument("--version", action="version", version=f"pacslb {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("check", help="validate a config file; print every problem")
    p.add_argument("file", type=Path, help="the config file, or - for standard input")
    p.add_argument("--json", action="store_true", help="one JSON document, for scripts")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("profile", help="write a ready deployment (McKesson, or an empty node)")
    p.add_argument("name", choices=["mckesson", "empty"])
    p.add_argument("--variant", choices=["dr", "nat-l7", "proxy"], default="dr")
    p.add_argument(
        "--vip",
        action="append",
        default=[],
        metavar="KEY=ADDR",
        help="service key (dicom, web, manager, crv, cardiology) and its VIP",
    )
    p.add_argument(
        "--rip", action="append", default=[], metavar="KEY=ADDR,ADDR", help="real servers"
    )
    p.add_argument(
        "--dicom-check",
        choices=["connect", "echo"],
        default="connect",
        help="check the DICOM service by TCP connect (the guide) or a DICOM C-ECHO",
    )
    p.add_argument("--dicom-mode", choices=["l7-dicom"], help="the DICOM service's mode")
    p.add_argument("--called-ae", default="ANY-SCP", help="the archive's AE title (C-ECHO)")
    p.add_argument("--state-dir", help="node.state_dir to write into the config")
    p.add_argument("--webui-listen", help="node.webui.listen, e.g. 127.0.0.1:9443")
    p.add_argument("--output", "-o", help="write here (atomically) instead of stdout")
    p.set_defaults(func=cmd_profile)

    p = sub.add_parser("plan", help="show the Plan a config gives (effective weights, interfaces)")
    p.add_argument("file", type=Path)
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--no-routes",
        dest="routes",
        action="store_false",
        help="leave out the interface each VIP and real server is reached on",
    )
    p.add_argument("--state-dir", type=Path, help="apply the admin states stored here")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser(
        "config",
        help="config revisions: list, show, diff, rollback, save (rollback and save go "
        "through the running pacslb when one runs)",
    )
    p.add_argument("action", choices=["list", "show", "diff", "rollback", "save"])
    p.add_argument("a", nargs="?", type=int, help="revision (show, diff, rollback)")
    p.add_argument("b", nargs="?", type=int, help="second revision (diff)")
    p.add_argument("--file", help="config file to save as a new revision")
    p.add_argument("--comment", default="", help="what the revision changes")
    p.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
    p.set_defaults(func=cmd_config)

    p = sub.add_parser("run", help="run the load balancer on a config file")
    p.add_argument("file", type=Path)
    p.add_argument("--state-dir", help="override node.state_dir")
    p.add_argument(
        "--degraded",
        action="store_true",
        help="start even when a service cannot be placed on this host (the problems `pacslb "
        "doctor` calls blocking): the rest runs, and status, /metrics and the WebUI say "
        "degraded, naming each problem, until a reload finds none",
    )
    p.set_defaults(func=cmd_run)

    def locate(p: argparse.ArgumentParser) -> None:
        p.add_argument("--state-dir", help="state directory of the running pacslb")
        p.add_argument("--config", "-c", help="find the state directory from this config")

    p = sub.add_parser("status", help="every VIP and real server: health, admin state, checks")
    p.add_argument("--json", action="store_true", help="one JSON document, for scripts")
    locate(p)
    p.set_defaults(func=cmd_status)

    for name, text in (
        ("drain", "no new connections; existing ones and persistent clients finish"),
        ("halt", "no traffic at all; existing connections are closed"),
        ("online", "back into rotation"),
    ):
        p = sub.add_parser(name, help=f"{name} a real server: {text}")
        p.add_argument("service", help="virtual service label")
        p.add_argument("server", help="real server label")
        locate(p)
        p.set_defaults(func=cmd_admin)

    p = sub.add_parser("events", help="the event log: health, admin, config, plan")
    from pacslb.control.events import EVENT_KINDS

    p.add_argument("--kind", choices=EVENT_KINDS)
    p.add_argument("--service")
    p.add_argument("--limit", type=int, default=50)
    locate(p)
    p.set_defaults(func=cmd_events)

    p = sub.add_parser("stop", help="stop the running pacslb (as SIGTERM does)")
    p.add_argument(
        "--keep-data-plane",
        action="store_true",
        help="leave the proxy workers (and the kernel tables, which always stay) forwarding "
        "for the next `pacslb run` to adopt: a restart or upgrade that drops no connection",
    )
    locate(p)
    p.set_defaults(func=cmd_stop)

    from pacslb.cli_ha import add_ha_commands

    add_ha_commands(sub, locate)
    from pacslb.cli_alert import add_alert_commands

    add_alert_commands(sub, locate)

    p = sub.add_parser("reload", help="re-read the config file of the running pacslb")
    locate(p)
    p.set_defaults(func=cmd_reload)

    from pacslb.control import backup_cli

    backup_cli.add_parsers(sub, locate, _state_dir)

    p = sub.add_parser(
        "teardown",
        help="stopped pacslb: delete its nftables tables and the VIPs it added (layer 4 "
        "forwarding, which outlives `pacslb run`, ends)",
    )
    locate(p)
    p.set_defaults(func=cmd_teardown)

    from pacslb.control import stop_intent

    stop_intent.add_parser(sub, locate, _state_dir)  # stop-data-plane: the unit's ExecStopPost

    p = sub.add_parser("passwd", help="set the password of a WebUI/REST API user")
    p.add_argument("--user", default="admin", help="user name (default admin)")
    p.add_argument(
        "--role", choices=["admin", "readonly"], help="role (a new user: admin; else unchanged)"
    )
    p.add_argument("--password-stdin", action="store_true", help="read it from standard input")
    locate(p)
    p.set_defaults(func=cmd_passwd)

    p = sub.add_parser("demo", help="the McKesson deployment on loopback with demo servers")
    p.add_argument("--state-dir", default="state/demo", help="where the demo keeps its state")
    p.add_argument("--webui-listen", default="127.0.0.1:9443")
    p.add_argument("--net", metavar="127.X.Y", help="put the whole demo in this loopback /24")
    p.add_argument(
        "--fail", metavar="SERVER", help="running demo: SERVER fails its check (again: recovers)"
    )
    p.add_argument("--recover", metavar="SERVER", help="running demo: SERVER recovers")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("proxy", help="the l7 data plane process (started by `pacslb run`)")
    p.add_argument("--socket", required=True, help="control socket path")
    p.set_defaults(func=cmd_proxy)

    p = sub.add_parser(
        "realserver", help="print a real server's setup: Direct Routing (ARP), NAT (gateway)"
    )
    p.add_argument("--vip", action="append", default=[], metavar="ADDR", help="a DR VIP")
    p.add_argument(
        "--config", "-c", help="every l4-dr and l4-nat real server of this config, one by one"
    )
    p.add_argument(
        "--gateway",
        metavar="ADDR",
        help="l4-nat: the real servers' gateway (default: this host's address on their "
        "segment; in an HA pair the floating gateway address)",
    )
    p.add_argument("--os", choices=["linux", "windows"], default="linux")
    p.add_argument("--interface", default="eth0", help="linux: the server's LAN interface")
    p.add_argument("--lan-adapter", default="net", help="windows: the LAN adapter's name")
    p.add_argument("--loopback-adapter", default="loopback", help="windows: the loopback's")
    p.set_defaults(func=cmd_realserver)

    p = sub.add_parser("doctor", help="check this host (and a config's real servers)")
    p.add_argument("file", type=Path, nargs="?", help="the config whose services to probe")
    p.add_argument("--json", action="store_true", help="one JSON document, for scripts")
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("schema", help="print the config's JSON Schema")
    p.set_defaults(func=cmd_schema)

    from pacslb.cli_pair import add_token_commands

    add_token_commands(sub, locate, _state_dir)  # pacslb token create|list|revoke
    return parser


def _config_args_ok(args: argparse.Namespace) -> str | None:
    if args.command != "config":
        return None
    needs = {"show": ("a",), "rollback": ("a",), "diff": ("a", "b"), "save": ("file",)}
    missing = [n for n in needs.get(args.action, ()) if getattr(args, n) is None]
    if missing:
        return f"config {args.action} needs {' and '.join(missing)}"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    problem = _config_args_ok(args)
    if problem:
        parser.error(problem)
    try:
        result: int = args.func(args)
    except BrokenPipeError:  # `pacslb status | head -1`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_INVALID
    except (PacslbError, LookupError, OSError) as exc:
        print(f"pacslb {args.command}: {exc}", file=sys.stderr)
        return EXIT_INVALID
    return result


if __name__ == "__main__":
    raise SystemExit(main())
