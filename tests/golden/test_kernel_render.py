"""Config -> nftables script, compared with the reviewed files beside this test.

Regenerate after an intended change with `UPDATE_GOLDEN=1 pytest tests/golden` and review the
diff like code. Each script is also checked by nft itself (`nft -c`) when nft is installed."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pacslb import config as c
from pacslb.control.store import read_config
from pacslb.core import nft
from pacslb.core.plan import build_plan
from pacslb.core.slots import service_slots
from pacslb.core.state import AdminState

HERE = Path(__file__).parent / "kernel"


def facts(plan: object) -> nft.KernelFacts:
    links, macs = {}, {}
    for svc in nft.kernel_services(plan):  # type: ignore[arg-type]
        links[svc.label] = nft.DrLink("eth1", "02:00:00:00:00:01")
        for rs in svc.real_servers:
            macs[rs.address] = f"02:00:00:00:01:{len(macs) + 1:02x}"
    return nft.KernelFacts(links, macs)


def rendered(name: str, admin: dict[tuple[str, str], AdminState] | None = None) -> nft.Ruleset:
    _, config = read_config(HERE / f"{name}.yaml")
    plan = build_plan(config, admin=admin or {})
    slots = {svc.label: service_slots(svc) for svc in nft.kernel_services(plan)}
    return nft.render(plan, facts(plan), slots)


def check(name: str, text: str) -> None:
    path = HERE / name
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text(), f"{path} differs: UPDATE_GOLDEN=1 and review the diff"


@contextlib.contextmanager
def scratch_namespace() -> Iterator[str]:
    """A namespace with a device called eth1 (the DR chain names it); deleted afterwards."""
    ns = f"plbgold{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(
            ["ip", "-n", ns, "link", "add", "eth1", "type", "veth", "peer", "name", "eth2"],
            check=True,
        )
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


def nft_accepts(text: str) -> None:
    """nft's own parser and the kernel's checks, without changing anything (`-c`)."""
    if shutil.which("nft") is None or os.geteuid() != 0:
        return
    with scratch_namespace() as ns:
        done = subprocess.run(
            ["ip", "netns", "exec", ns, "nft", "-c", "-f", "-"],
            input=text,
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, done.stderr


def test_every_kernel_mode_renders_as_reviewed() -> None:
    ruleset = rendered("mixed")
    check("mixed.nft", ruleset.script)
    nft_accepts(ruleset.script)


def test_an_admin_change_is_an_element_update_of_the_same_shape() -> None:
    before = rendered("mixed")
    halted = rendered(
        "mixed",
        {
            ("Viewer6", "V1"): AdminState.HALT,
            ("Radiology_DICOM", "Srv2"): AdminState.DRAIN,
        },
    )
    assert halted.shape == before.shape  # the engine then sends only `elements`
    check("mixed-halt.elements.nft", halted.elements)


def test_a_wlc_re_deal_refills_only_the_slot_tables() -> None:
    """Once a second for `wlc`: the deterministic hash tables and the counter maps stay."""
    slots = rendered("mixed").slots
    check("mixed.slots.nft", slots)
    refilled = {line.split()[4] for line in slots.splitlines() if line.startswith("flush")}
    assert refilled and all(name.endswith("_slots") for name in refilled)


def test_an_update_of_live_tables_flushes_and_deletes_what_went() -> None:
    _, config = read_config(HERE / "mixed.yaml")
    plan = build_plan(config)
    slots = {svc.label: service_slots(svc) for svc in nft.kernel_services(plan)}
    live = nft.render(plan, facts(plan), slots).live
    smaller = build_plan(
        config.model_copy(update={"virtual_services": config.virtual_services[:1]})
    )
    update = nft.render(smaller, facts(smaller), slots, live)
    check("mixed-remove.nft", update.script)
    assert "delete table ip pacslb" in update.script
    assert "delete table ip6 pacslb" in update.script
    # The DR table is kept (its flows live on); its chains are flushed and refilled.
    assert "add table netdev pacslb" in update.script


@pytest.mark.parametrize("variant", ["dr", "nat-l7"])
def test_the_mckesson_profile_renders_and_nft_accepts_it(variant: str, tmp_path: Path) -> None:
    from pacslb.profiles import mckesson

    data, examples = mckesson.build(variant)
    text = mckesson.render(data, variant, examples)
    path = tmp_path / "p.yaml"
    path.write_text(text)
    _, config = read_config(path)
    plan = build_plan(config)
    slots = {svc.label: service_slots(svc) for svc in nft.kernel_services(plan)}
    script = nft.render(plan, facts(plan), slots).script
    assert script.count(" jump s") == len(nft.kernel_services(plan))
    nft_accepts(script)


def test_what_the_engine_reads_back_from_the_kernel_is_what_it_rendered() -> None:
    """The adoption path (a restarted pacslb) sees exactly the objects a render made."""
    if shutil.which("nft") is None or os.geteuid() != 0:
        pytest.skip("needs root and nft (CI has both)")
    ruleset = rendered("mixed")
    with scratch_namespace() as ns:
        subprocess.run(
            ["ip", "netns", "exec", ns, "nft", "-f", "-"],
            input=ruleset.script,
            text=True,
            check=True,
        )
        code = (
            "from pathlib import Path; from dataclasses import astuple;"
            "from pacslb.engines.kernel import KernelEngine;"
            "print([sorted(x) for x in astuple(KernelEngine(Path('/nonexistent'))._read_live())])"
        )
        done = subprocess.run(
            ["ip", "netns", "exec", ns, sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
        )
    assert done.stdout.strip() == str([sorted(x) for x in dataclasses.astuple(ruleset.live)])


def test_updates_of_a_live_table_are_accepted_by_the_kernel() -> None:
    """Each kind of change, applied to the tables the previous step left (as the engine does):
    servers and services removed and added back, a persistence timeout changed."""
    if shutil.which("nft") is None or os.geteuid() != 0:
        pytest.skip("needs root and nft (CI has both)")
    _, config = read_config(HERE / "mixed.yaml")
    dr, web, viewer = config.virtual_services

    def without(vs: c.VirtualService, n: int) -> c.VirtualService:
        return vs.model_copy(update={"real_servers": vs.real_servers[:n]})

    steps = [
        [dr, web, viewer],
        [without(dr, 1), web, viewer],  # a DR server removed (its counters go)
        [without(dr, 1), without(web, 1), viewer],  # a NAT server removed
        [without(dr, 1), without(web, 1)],  # an ip6 service (and its table) removed
        [dr.model_copy(update={"persistence": c.SourceIPPersistence(timeout=60)}), web],
        [dr, web, viewer],  # and everything back
    ]
    live = nft.LiveObjects()
    with scratch_namespace() as ns:
        for i, services in enumerate(steps):
            plan = build_plan(config.model_copy(update={"virtual_services": services}))
            slots = {svc.label: service_slots(svc) for svc in nft.kernel_services(plan)}
            ruleset = nft.render(plan, facts(plan), slots, live)
            done = subprocess.run(
                ["ip", "netns", "exec", ns, "nft", "-f", "-"],
                input=ruleset.script,
                capture_output=True,
                text=True,
                check=False,
            )
            assert done.returncode == 0, f"step {i}: {done.stderr}"
            live = ruleset.live


def test_a_removed_server_drains_as_an_element_update() -> None:
    """Removal keeps the server in the tables as REMOVING: its flows go on (not halted), no new
    flow and no persistent client goes to it (out of the slots and of `alive`), and the update
    is elements only, as a drain is."""
    from pacslb.core.plan import removals

    _, config = read_config(HERE / "mixed.yaml")
    plan = build_plan(config)
    slots = {svc.label: service_slots(svc) for svc in nft.kernel_services(plan)}
    before = nft.render(plan, facts(plan), slots)
    drop = {"Radiology_DICOM": "Srv2", "Radiology_Web": "Web2"}
    services = [
        vs.model_copy(
            update={
                "real_servers": [rs for rs in vs.real_servers if rs.label != drop.get(vs.label)]
            }
        )
        for vs in config.virtual_services
    ]
    new = config.model_copy(update={"virtual_services": services})
    leaving = removals(plan, config, new, now=0.0)
    assert sorted(leaving) == [("Radiology_DICOM", "Srv2"), ("Radiology_Web", "Web2")]
    after = build_plan(new, leaving=leaving)
    slots = {svc.label: service_slots(svc) for svc in nft.kernel_services(after)}
    ruleset = nft.render(after, facts(after), slots)
    assert ruleset.shape == before.shape
    elements = {
        line.split()[4]: line for line in ruleset.elements.splitlines() if line.startswith("add")
    }
    dr, nat = nft.service_id("Radiology_DICOM"), nft.service_id("Radiology_Web")
    srv2_mac, web2_mark = "02:00:00:00:01:02", str(nft.server_id("Radiology_Web", "Web2"))
    assert srv2_mac not in elements[f"{dr}_alive"] and srv2_mac not in elements[f"{dr}_slots"]
    assert f"{dr}_halted" not in elements  # flushed, empty: no flow is cut
    assert web2_mark not in elements[f"{nat}_alive"] and web2_mark not in elements[f"{nat}_slots"]
    assert web2_mark not in elements.get("nat_halted", "")
    nft_accepts(ruleset.script)
