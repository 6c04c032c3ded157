"""The documentation stays true: the configuration reference is the models', every block of
commands says how it is checked, every relative link resolves. (The commands themselves are run
by tests/integration/test_docs_check.py and `make docs-check`.)"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def script(name: str) -> ModuleType:
    """A module of scripts/ (run as programs, so not a package)."""
    spec = importlib.util.spec_from_file_location(f"docs_{name}", ROOT / "scripts" / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_configuration_reference_is_current() -> None:
    """docs/configuration.md is generated (`make docs-config`); it must match the models."""
    reference = script("config_reference")
    written = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert written == reference.render(), "docs/configuration.md is stale: make docs-config"


def test_the_reference_names_every_field_of_every_model() -> None:
    reference = script("config_reference")
    text = reference.render()
    for _, model, _ in reference.SECTIONS:
        for name in model.model_fields:
            assert f"| `{name}` |" in text, f"{model.__name__}.{name} missing"
    # a default that depends on the host is not written as this host's value
    assert "| `workers` | integer | computed (see the description) |" in text


def test_the_reference_has_a_section_for_every_model_of_the_config(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every model of config.py and config_alerts.py (those a file can hold: not the bases)
    has its section; one the hand-written list forgets gets one under its key path."""
    from pydantic import BaseModel

    from pacslb import config, config_alerts

    reference = script("config_reference")
    text = reference.render()
    documented = {model for _, model, _ in reference.all_sections()}
    for module in (config, config_alerts):
        for name, value in vars(module).items():
            is_model = isinstance(value, type) and issubclass(value, BaseModel)
            if is_model and value.__module__ == module.__name__ and name not in BASES:
                assert value in documented, f"{name} has no section in docs/configuration.md"
    for heading, _, _ in reference.all_sections():
        assert f"\n## {heading}\n" in text
    # a model left out of SECTIONS (as a new one would be) still gets its section
    short = [s for s in reference.SECTIONS if s[1] is not config.AERoute]
    monkeypatch.setattr(reference, "SECTIONS", short)
    path = "virtual_services[].dicom.routes[]"
    assert (f"{path} (AERoute)", config.AERoute, f"`{path}`") in reference.all_sections()


BASES = {"Model", "_Model", "_CheckCommon"}  # the models' bases: never a section of their own


def test_an_ae_title_is_16_characters_in_the_reference_and_the_schema() -> None:
    """The validator refuses more than 16 (DICOM PS3.5); the reference and schema say so."""
    from pacslb.config import config_json_schema

    text = script("config_reference").render()
    assert "at most 64" not in text
    assert "| `ae_title` | text | unset |" in text and "(1-16 characters) |" in text
    defs = config_json_schema()["$defs"]
    for model, field in (("DicomEchoCheck", "calling_ae"), ("AERoute", "called_ae")):
        assert defs[model]["properties"][field]["maxLength"] == 16
    (title, _) = defs["RealServer"]["properties"]["ae_title"]["anyOf"]
    assert (title["minLength"], title["maxLength"]) == (1, 16)


def test_every_command_block_is_marked_and_every_link_resolves() -> None:
    check = script("docs_check")
    report = check.Report()
    blocks = []
    for doc in check.DOCS:
        check.check_links(doc, report)
        blocks += check.parse(doc)  # raises DocError for a shell block without a marker
    assert report.failures == []
    kinds = {b.kind for b in blocks}
    assert {"tmp", "netns", "demo", "file", "covered", "options"} <= kinds
    # the checkout-path mistake the issue names: no machine's path in a command
    for b in blocks:
        assert "/work/" not in "\n".join(b.body), f"{b.doc}:{b.line}"


def test_output_matching_with_ellipses() -> None:
    check = script("docs_check")
    assert check.matches(["a", "...", "d"], ["a", "b", "c", "d"])
    assert check.matches(["a", "...", "d"], ["a", "d"])
    assert check.matches(["pid ... up"], ["pid 42 up"])
    assert check.matches(["x  "], ["x"])  # trailing spaces and \r (curl) do not count
    assert not check.matches(["a", "d"], ["a", "b", "d"])
    assert not check.matches(["pid ... up"], ["pid 42 down"])
    assert not check.matches(["a"], [])


def test_a_block_of_commands_without_a_marker_is_refused(tmp_path: Path) -> None:
    check = script("docs_check")
    doc = tmp_path / "unmarked.md"
    doc.write_text("text\n\n```console\n$ pacslb --version\n```\n")
    with pytest.raises(check.DocError, match="a console block without a marker"):
        check.parse(doc)


def test_commands_continue_and_promise_their_exit_status() -> None:
    check = script("docs_check")
    block = check.Block(
        ROOT / "README.md",
        1,
        "tmp",
        "",
        "console",
        [
            "$ pacslb check broken.yaml   # exits 1",
            "broken.yaml: 1 problem",
            "$ pacslb profile mckesson \\",
            "    --variant dr",
        ],
    )
    first, second = check.commands(block)
    assert (first.exit_code, first.expected) == (1, ["broken.yaml: 1 problem"])
    assert second.text == "pacslb profile mckesson \\\n    --variant dr"
    assert (second.exit_code, second.expected) == (0, [])


def test_the_demo_docs_check_starts_is_what_make_run_starts() -> None:
    """docs-check runs the `demo` blocks beside `pacslb demo --state-dir state/run`; the docs
    call that `make run`, so the Makefile must start exactly that."""
    makefile = (ROOT / "Makefile").read_text()
    assert "RUN_DIR ?= $(CURDIR)/state/run" in makefile
    assert "run: $(STAMP)\n\t$(BIN)/pacslb demo --state-dir $(RUN_DIR)\n" in makefile
    source = (ROOT / "scripts" / "docs_check.py").read_text()
    assert '"demo", "--state-dir", "state/run"' in source


# The commands that write into the state directory with no pacslb running. Run as a demo block
# shows them but without --state-dir, they would write into the host's /var/lib/pacslb (docs-check
# points PACSLB_STATE_DIR at the demo's, a reader's shell does not).
STATE_WRITERS = re.compile(
    r"\bpacslb (passwd|token (create|revoke)|config (save|rollback)|restore|teardown|"
    r"stop-data-plane)\b"
)


def test_commands_that_write_state_name_the_state_directory() -> None:
    check = script("docs_check")
    unnamed = [
        f"{check.rel(b.doc)}:{c.line}: {c.text}"
        for doc in check.DOCS
        for b in check.parse(doc)
        if b.kind in {"tmp", "netns", "demo"}
        for c in b.commands
        if STATE_WRITERS.search(c.text) and not re.search(r"--state-dir|--config|-c ", c.text)
    ]
    assert unnamed == []
