"""Run the commands the docs show, and compare their output with what the docs print.

`make docs-check` runs it. A fenced ```console block is preceded by a marker (an HTML comment,
invisible when the Markdown is rendered) that says where its commands run:

    <!-- docs-check: tmp -->      in a scratch directory, one per document (files made by one
                                  block are there for the next), laid out like a checkout:
                                  `pacslb` and `.venv/bin/pacslb` run this tree's pacslb
    <!-- docs-check: netns -->    as `tmp` (the same directory), inside a network namespace of
                                  its own with only loopback up: a host not yet cabled
    <!-- docs-check: demo -->     beside a running `pacslb demo --state-dir state/run` (what
                                  `make run` starts), in a network namespace of its own, so
                                  its addresses and ports (127.0.0.30-50, 80/443/4000/5000,
                                  9443) clash with nothing on the host; cwd as for `tmp`
    <!-- docs-check: demo A=B C=D -->  the same, each address A written as B before running:
                                  a deployment guide's addresses pointed at the demo's
    <!-- docs-check: file NAME -->  the next fenced block (any language) is written to NAME in
                                  the document's scratch directory
    <!-- docs-check: covered tests/F.py::test_name ... -->  not run here: the named tests run
                                  these commands as a user would (each test must exist)
    <!-- docs-check: options -->  a long-running command (a benchmark): each line of the block
                                  is a command; its program is run with --help instead, and
                                  every --option the line uses must be in that help
    <!-- docs-check: skip REASON --> not run; listed with its reason in the summary

In a block, a line `$ COMMAND` is a command (a trailing backslash continues it on the next line);
the lines after it, up to the next command, are its expected output (stdout and stderr
together). A line `...` matches any number of lines, and `...` inside a line any text. A command
with no output shown is only required to succeed. A trailing `# exit N` (or `# exits N`) says
the exit status the docs promise; otherwise it must be 0. Variables set by one command
(`T=$(...)`) are kept for the next commands of the same document.

Every ```console block must carry a marker, and every relative link must name a file that
exists, so a new command cannot slip in unchecked.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "bench" / "README.md"]
# Written by other work in progress; a link to them is reported, not failed.
PENDING: set[str] = set()
MARKER = re.compile(r"^<!--\s*docs-check:\s*(\S+)(.*?)-->\s*$")
FENCE = re.compile(r"^(```+|~~~+)\s*([\w-]*)")
LINK = re.compile(r"\]\(([^)\s#]+)(#[^)]*)?\)")
EXIT = re.compile(r"\s#\s*exits?\s+(\d+)\s*$")
SHELLS = {"console", "sh", "shell", "bash"}  # blocks of commands: each needs a marker
COMMAND_TIMEOUT = 60.0
DEMO_READY_TIMEOUT = 60.0


@dataclass
class Command:
    text: str
    expected: list[str]
    exit_code: int
    line: int


@dataclass
class Block:
    doc: Path
    line: int
    kind: str  # tmp, demo, file, skip
    argument: str
    language: str
    body: list[str]
    commands: list[Command] = field(default_factory=list)


class DocError(Exception):
    """A document breaks the rules above (a block without marker, a bad marker)."""


def parse(doc: Path) -> list[Block]:
    lines = doc.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    marker: tuple[str, str, int] | None = None
    i = 0
    while i < len(lines):
        found = MARKER.match(lines[i].strip())
        if found:
            marker = (found.group(1), found.group(2).strip(), i + 1)
            i += 1
            continue
        fence = FENCE.match(lines[i])
        if not fence:
            if lines[i].strip():
                marker = None  # a marker belongs to the block right after it
            i += 1
            continue
        start = i
        close = fence.group(1)
        i += 1
        body = []
        while i < len(lines) and not lines[i].startswith(close):
            body.append(lines[i])
            i += 1
        i += 1
        language = fence.group(2)
        if marker is None:
            if language in SHELLS:
                raise DocError(f"{rel(doc)}:{start + 1}: a {language} block without a marker")
            continue
        kind, argument, _ = marker
        if kind not in {"tmp", "netns", "demo", "file", "skip", "covered", "options"}:
            raise DocError(f"{rel(doc)}:{marker[2]}: unknown docs-check marker {kind!r}")
        block = Block(doc, start + 1, kind, argument, language, body)
        if kind in {"tmp", "netns", "demo"}:
            block.commands = commands(block)
        blocks.append(block)
        marker = None
    return blocks


def commands(block: Block) -> list[Command]:
    out: list[Command] = []
    lines = block.body
    i = 0
    while i < len(lines):
        if not lines[i].startswith("$ "):
            if not out:
                raise DocError(f"{rel(block.doc)}:{block.line + i + 1}: output before any `$ `")
            out[-1].expected.append(lines[i])
            i += 1
            continue
        text = lines[i][2:]
        first = i
        while text.endswith("\\") and i + 1 < len(lines):
            i += 1
            text = text + "\n" + lines[i]
        found = EXIT.search(text)
        code = int(found.group(1)) if found else 0
        out.append(Command(text, [], code, block.line + first + 1))
        i += 1
    return out


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def matches(expected: list[str], actual: list[str]) -> bool:
    """`...` alone matches any lines; inside a line, any text. Trailing spaces are ignored."""
    if not expected:
        return not actual
    head, rest = expected[0].rstrip(), expected[1:]
    if head == "...":
        return any(matches(rest, actual[k:]) for k in range(len(actual) + 1))
    if not actual:
        return False
    pattern = "^" + ".*".join(re.escape(part) for part in head.split("...")) + "$"
    return bool(re.match(pattern, actual[0].rstrip())) and matches(rest, actual[1:])


# --- where commands run ------------------------------------------------------------------


def scratch(base: Path, name: str) -> Path:
    """A directory laid out like a checkout: `.venv/bin/pacslb` and `pacslb` run this tree."""
    work = base / name
    (work / ".venv" / "bin").mkdir(parents=True)
    wrapper = work / ".venv" / "bin" / "pacslb"
    wrapper.write_text(
        f"#!/bin/sh\nPYTHONPATH={shlex.quote(str(ROOT / 'src'))} "
        f'exec {shlex.quote(sys.executable)} -m pacslb.cli "$@"\n'
    )
    wrapper.chmod(0o755)
    # A script, not a symlink: a venv's python found through a symlink elsewhere loses its venv.
    python = work / ".venv" / "bin" / "python"
    python.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@"\n')
    python.chmod(0o755)
    for sub in ("scripts", "bench", "tests"):  # `python scripts/...` as from the repository
        (work / sub).symlink_to(ROOT / sub)
    return work


class Shell:
    """One bash per document: commands share variables; output is read up to a sentinel."""

    def __init__(self, cwd: Path, netns: str | None, state_dir: Path | None = None) -> None:
        env = dict(os.environ)
        env["PATH"] = f"{cwd / '.venv' / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}"
        # Where an installed pacslb keeps its state is /var/lib/pacslb; beside the demo, as
        # `pacslb status` run there would find it, the demo's.
        env.pop("PACSLB_STATE_DIR", None)
        if state_dir:
            env["PACSLB_STATE_DIR"] = str(state_dir)
        env["COLUMNS"] = "100"
        env["PYTHONPATH"] = str(ROOT / "src")  # `.venv/bin/python ...` imports this tree
        argv = ["bash", "--noprofile", "--norc"]
        if netns:
            argv = ["ip", "netns", "exec", netns, *argv]
        self.proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )

    def run(self, text: str) -> tuple[int, list[str]]:
        assert self.proc.stdin and self.proc.stdout
        sentinel = f"__docs_check_{time.monotonic_ns()}__"
        # stdin from /dev/null unless the command pipes into itself; both streams merged.
        script = f"{{ {text}\n}} </dev/null 2>&1\n__rc=$?; echo; echo {sentinel} $__rc\n"
        self.proc.stdin.write(script)
        self.proc.stdin.flush()
        lines: list[str] = []
        deadline = time.monotonic() + COMMAND_TIMEOUT
        while True:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no end after {COMMAND_TIMEOUT:.0f} s")
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError("the shell ended: " + "".join(lines))
            if line.startswith(sentinel):
                code = int(line.split()[1])
                if lines and lines[-1] == "\n":
                    lines.pop()  # the `echo` before the sentinel ended a line of its own
                return code, [ln.rstrip("\n") for ln in "".join(lines).splitlines()]
            lines.append(line)

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait(timeout=10)


@contextlib.contextmanager
def empty_namespace() -> Iterator[str]:
    """A network namespace with only its loopback up: a host with no network configured."""
    netns = f"pacslb-docs-{os.getpid()}-{time.monotonic_ns() % 10**6}"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    try:
        subprocess.run(["ip", "-n", netns, "link", "set", "lo", "up"], check=True)
        yield netns
    finally:
        subprocess.run(["ip", "netns", "delete", netns], check=False)


@contextlib.contextmanager
def demo_namespace(base: Path, log: Path) -> Iterator[tuple[str, Path]]:
    """`pacslb demo --state-dir state/run` in a network namespace made (and deleted) here."""
    netns = f"pacslb-docs-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    demo: subprocess.Popen[bytes] | None = None
    try:
        subprocess.run(["ip", "-n", netns, "link", "set", "lo", "up"], check=True)
        work = scratch(base, "demo")
        pacslb = str(work / ".venv" / "bin" / "pacslb")
        with log.open("wb") as out:
            demo = subprocess.Popen(
                ["ip", "netns", "exec", netns, pacslb, "demo", "--state-dir", "state/run"],
                cwd=work,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + DEMO_READY_TIMEOUT
        status_argv = ["ip", "netns", "exec", netns, pacslb, "status", "--json"]
        while True:
            status = subprocess.run(
                [*status_argv, "--state-dir", "state/run"],
                cwd=work,
                capture_output=True,
                text=True,
                timeout=30,
            )
            if status.returncode == 0:
                data = json.loads(status.stdout)
                servers = [rs for s in data["services"] for rs in s["real_servers"]]
                if data["ready"] and all(rs["health"] == "up" for rs in servers):
                    break
            if demo.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the demo did not become ready:\n" + log.read_text())
            time.sleep(0.2)
        yield netns, work
    finally:
        if demo is not None and demo.poll() is None:
            os.killpg(demo.pid, 15)  # the demo's own group: pacslb demo and its proxy workers
            try:
                demo.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(demo.pid, 9)
                demo.wait(timeout=10)
        subprocess.run(["ip", "netns", "delete", netns], check=False)


# --- the run -----------------------------------------------------------------------------


@dataclass
class Report:
    ran: int = 0
    covered: int = 0  # blocks whose commands named tests run
    failures: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def check_links(doc: Path, report: Report) -> None:
    for number, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), start=1):
        for target, _ in LINK.findall(line):
            if "://" in target or target.startswith("mailto:"):
                continue
            path = (doc.parent / target).resolve()
            name = str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)
            if path.exists():
                continue
            if name in PENDING:
                report.warnings.append(f"{rel(doc)}:{number}: link to {name}, not written yet")
            else:
                report.failures.append(f"{rel(doc)}:{number}: link to a missing file {target}")


def check_covered(block: Block, report: Report) -> None:
    """`covered tests/F.py::test_a tests/G.py::test_b`: each named test must exist."""
    refs = block.argument.split()
    missing = []
    for ref in refs:
        path, _, name = ref.partition("::")
        source = ROOT / path
        if not name or not source.is_file() or f"def {name}(" not in source.read_text():
            missing.append(ref)
    if not refs or missing:
        what = f"no test {', '.join(missing)}" if missing else "`covered` names no test"
        report.failures.append(f"{rel(block.doc)}:{block.line}: {what}")
    else:
        report.covered += 1


def option_lines(block: Block) -> list[tuple[int, str]]:
    """The commands of an `options` block: its lines, backslash-continued, without comments."""
    out: list[tuple[int, str]] = []
    pending = ""
    for n, line in enumerate(block.body):
        text = pending + line.strip()
        if text.endswith("\\"):
            pending = text[:-1] + " "
            continue
        pending = ""
        if text and not text.startswith("#"):
            out.append((block.line + n + 1, text))
    return out


def check_options(block: Block, work: Path, report: Report) -> None:
    env = dict(os.environ, PATH=f"{work / '.venv' / 'bin'}:{os.environ.get('PATH', '')}")
    env["PYTHONPATH"] = str(ROOT / "src")  # `.venv/bin/python bench/...` imports this tree
    for line, text in option_lines(block):
        where = f"{rel(block.doc)}:{line}"
        words = shlex.split(text, comments=True)
        if words[:1] == ["sudo"]:
            words = words[1:]
        first = next((i for i, w in enumerate(words) if w.startswith("-")), len(words))
        program, options = words[:first], [w.split("=")[0] for w in words if w.startswith("--")]
        try:
            done = subprocess.run(
                [*program, "--help"], cwd=work, env=env, capture_output=True, text=True, timeout=60
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            report.failures.append(f"{where}: {' '.join(program)} --help: {exc}")
            continue
        report.ran += 1
        known = set(re.findall(r"--[\w-]+", done.stdout))
        unknown = [o for o in options if o not in known]
        if done.returncode != 0 or unknown:
            report.failures.append(
                f"{where}: {text}\n  {' '.join(program)} --help exited {done.returncode}"
                + (f"; it has no {', '.join(unknown)}" if unknown else "")
            )


def substitute(text: str, argument: str) -> str:
    for pair in argument.split():
        old, _, new = pair.partition("=")
        text = text.replace(old, new)
    return text


def run_block(block: Block, shell: Shell, report: Report, verbose: bool) -> None:
    for command in block.commands:
        text = substitute(command.text, block.argument) if block.kind == "demo" else command.text
        where = f"{rel(block.doc)}:{command.line}"
        try:
            code, output = shell.run(text)
        except (TimeoutError, RuntimeError) as exc:
            report.failures.append(f"{where}: $ {command.text}\n  {exc}")
            continue
        report.ran += 1
        expected = [substitute(x, block.argument) for x in command.expected]
        problems = []
        if code != command.exit_code:
            problems.append(f"exit status {code}, the docs say {command.exit_code}")
        if expected and not matches(expected, output):
            problems.append(
                "output differs; the docs show:\n"
                + "\n".join("    " + x for x in expected)
                + "\n  it printed:\n"
                + "\n".join("    " + x for x in output)
            )
        if problems:
            report.failures.append(f"{where}: $ {command.text}\n  " + "\n  ".join(problems))
        elif verbose:
            print(f"ok  {where}: $ {command.text.splitlines()[0]}", file=sys.stderr)


def check(docs: list[Path], only: set[str], verbose: bool) -> Report:
    report = Report()
    parsed: dict[Path, list[Block]] = {}
    for doc in docs:
        check_links(doc, report)
        try:
            parsed[doc] = parse(doc)
        except DocError as exc:
            report.failures.append(str(exc))
    for blocks in parsed.values():
        for b in blocks:
            if b.kind == "skip":
                first = next((ln for ln in b.body if ln.strip()), "").removeprefix("$ ")
                report.skipped.append(f"{rel(b.doc)}:{b.line}: {first}  ({b.argument})")
            elif b.kind == "covered":
                check_covered(b, report)
    wanted = {k for k in ("tmp", "netns", "demo") if not only or k in only}
    if os.geteuid() != 0 and wanted & {"netns", "demo"}:
        wanted -= {"netns", "demo"}
        report.skipped.append("every netns and demo block: they need root (network namespaces)")
    with tempfile.TemporaryDirectory(prefix="pacslb-docs-") as tmp:
        base = Path(tmp)
        for n, (doc, blocks) in enumerate(parsed.items()):
            kinds = {b.kind for b in blocks} & ((wanted - {"demo"}) | {"options"})
            if not kinds:
                continue
            work = scratch(base, f"{n}-{doc.stem}")
            with contextlib.ExitStack() as stack:
                shells: dict[str, Shell] = {}
                for b in blocks:
                    if b.kind == "file":
                        (work / b.argument).write_text("\n".join(b.body) + "\n")
                    elif b.kind == "options":
                        check_options(b, work, report)
                    elif b.kind in kinds:
                        if b.kind not in shells:
                            netns = None
                            if b.kind == "netns":
                                netns = stack.enter_context(empty_namespace())
                            shells[b.kind] = Shell(work, netns)
                            stack.callback(shells[b.kind].close)
                        run_block(b, shells[b.kind], report, verbose)
        demo_blocks = [b for bs in parsed.values() for b in bs if b.kind == "demo"]
        if "demo" in wanted and demo_blocks:
            with demo_namespace(base, base / "demo.log") as (netns, work):
                for blocks in parsed.values():
                    if not any(b.kind == "demo" for b in blocks):
                        continue
                    # Each document its own directory (cookie jars, files), the demo's state
                    # at state/run in every one.
                    own = scratch(base, f"demo-{len(list(base.iterdir()))}")
                    (own / "state").symlink_to(work / "state")
                    shell = Shell(own, netns, work / "state" / "run")
                    try:
                        for b in blocks:
                            if b.kind == "demo":
                                run_block(b, shell, report, verbose)
                    finally:
                        shell.close()
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("docs", nargs="*", type=Path, help="default: README, docs/, bench/")
    parser.add_argument("--only", action="append", choices=["tmp", "netns", "demo"], default=[])
    parser.add_argument("-v", "--verbose", action="store_true", help="name every command run")
    args = parser.parse_args(argv)
    docs = [p.resolve() for p in args.docs] or DOCS
    started = time.monotonic()
    report = check(docs, set(args.only), args.verbose)
    for line in report.skipped:
        print(f"not run: {line}")
    for line in report.warnings:
        print(f"warning: {line}")
    for line in report.failures:
        print(f"FAILED: {line}")
    print(
        f"docs-check: {report.ran} commands run, {len(report.failures)} failed, "
        f"{report.covered} blocks covered by named tests, {len(report.skipped)} not run, "
        f"{time.monotonic() - started:.1f} s"
    )
    return 1 if report.failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
