"""What the keepalived supervisor says when HA cannot run on this host (no keepalived, no such
interface), and that a node without node.ha stays standalone. (keepalived itself, running,
is tests/netns/test_ha_vrrp.py.)"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from pacslb import config as c
from pacslb.control.ha import HaError, KeepalivedSupervisor, doctor_findings, find_keepalived
from pacslb.core.doctor import Level
from pacslb.core.ha_role import HaState, Role


def config(enabled: bool = True, interface: str = "lo", **more: Any) -> c.Config:
    ha = {
        "enabled": enabled,
        "interface": interface,
        "peers": ["198.18.0.3"],
        "secret": "s" * 16,
        **more,
    }
    return c.Config.model_validate({"version": 1, "node": {"ha": ha}, "virtual_services": []})


def supervise(tmp_path: Path, cfg: c.Config, find: Any) -> tuple[KeepalivedSupervisor, list[str]]:
    notes: list[str] = []
    supervisor = KeepalivedSupervisor(
        tmp_path, HaState(Role.STARTING), lambda message, data: notes.append(message), find
    )

    async def main() -> None:
        await supervisor.configure(cfg)
        with pytest.raises(HaError, match="keepalived is not running"):
            await supervisor.release()

    asyncio.run(main())
    return supervisor, notes


def test_no_keepalived_is_not_ready_and_names_the_package(tmp_path: Path) -> None:
    supervisor, notes = supervise(tmp_path, config(), lambda: None)
    assert supervisor.not_ready() == [
        "ha: keepalived is not installed (apt-get install keepalived)"
    ]
    assert supervisor.ha.role is Role.STOPPED and supervisor.pid is None
    assert notes == ["HA cannot run: keepalived is not installed (apt-get install keepalived)"]


def test_an_interface_the_host_lacks_is_named(tmp_path: Path) -> None:
    supervisor, _ = supervise(tmp_path, config(interface="pacslb-none0"), lambda: "/bin/false")
    assert supervisor.not_ready() == [
        "ha: node.ha.interface pacslb-none0: no such interface on this host"
    ]
    assert supervisor.ha.role is Role.STOPPED


def test_without_ha_the_node_is_standalone_and_release_says_why_not(tmp_path: Path) -> None:
    supervisor = KeepalivedSupervisor(tmp_path, HaState(Role.STARTING), lambda m, d: None)

    async def main() -> None:
        await supervisor.configure(config(enabled=False))
        with pytest.raises(HaError, match="not enabled"):
            await supervisor.release()

    asyncio.run(main())
    assert supervisor.ha.role is Role.STANDALONE and supervisor.not_ready() == []
    assert supervisor.status()["role"] == "standalone"


def test_a_keepalived_that_dies_at_start_is_not_ready_and_started_again(tmp_path: Path) -> None:
    """/bin/false stands for a keepalived that exits at once (a real process, not a mock)."""
    cfg = config(address="198.18.0.2")  # lo has no global address to send adverts from
    notes: list[str] = []
    supervisor = KeepalivedSupervisor(
        tmp_path, HaState(Role.STARTING), lambda m, d: notes.append(m), lambda: "/bin/false"
    )

    async def main() -> list[str]:
        await supervisor.configure(cfg)
        for _ in range(100):  # bounded: 5 s
            if supervisor.restarts >= 1 and supervisor.failing:
                break
            await asyncio.sleep(0.05)
        reasons = supervisor.not_ready()
        await supervisor.close()
        return reasons

    reasons = asyncio.run(main())
    assert len(reasons) == 1 and reasons[0].startswith("ha: keepalived exited (status 1)"), reasons
    assert any("starting it again in 0.2 s" in n for n in notes), notes
    assert supervisor.ha.role is Role.STOPPED and supervisor.pid is None
    assert (tmp_path / "keepalived" / "keepalived.conf").exists()


def test_doctor_finds_keepalived_and_warns_that_vrrpv3_is_unauthenticated() -> None:
    if find_keepalived() is None:
        pytest.skip("keepalived is not installed here (CI installs it)")
    assert doctor_findings(config(enabled=False)) == []
    plain = doctor_findings(config())
    assert [(f.check, f.level) for f in plain] == [("keepalived", Level.OK)]
    fast = doctor_findings(config(advert_int=0.3))
    assert fast[-1].level is Level.WARNING and "no authentication" in fast[-1].message


def test_once_keepalived_is_installed_it_starts_by_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pacslb.control.ha as ha_module

    monkeypatch.setattr(ha_module, "RETRY", 0.05)  # seconds between tries (5 in production)
    installed: list[str] = []  # /bin/false, "installed" later, stands for keepalived
    supervisor = KeepalivedSupervisor(
        tmp_path,
        HaState(Role.STARTING),
        lambda m, d: None,
        lambda: installed[0] if installed else None,
    )

    async def main() -> tuple[list[str], int | None, list[str]]:
        await supervisor.configure(config(address="198.18.0.2"))
        before = supervisor.not_ready()
        installed.append("/bin/false")
        for _ in range(100):  # bounded: 5 s
            if supervisor.restarts >= 1:
                break
            await asyncio.sleep(0.05)
        after = supervisor.not_ready()
        restarts = supervisor.restarts
        await supervisor.close()
        return before, restarts, after

    before, restarts, after = asyncio.run(main())
    assert before == ["ha: keepalived is not installed (apt-get install keepalived)"]
    assert restarts and restarts >= 1  # it was started (and, being /bin/false, started again)
    assert not any("not installed" in reason for reason in after), after


def test_a_turn_that_raises_is_an_event_and_supervision_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`ip` hanging while the addresses are taken away (subprocess.TimeoutExpired) used to end
    the supervision for good: keepalived never started again, the role left as it was."""
    import subprocess

    import pacslb.control.ha as ha_module

    real_drop = ha_module.drop_addresses
    hangs = [True]

    def drop_hanging_once(addresses: Any) -> list[str]:
        if hangs:
            hangs.clear()
            raise subprocess.TimeoutExpired(["ip", "addr", "del"], 5)
        return real_drop(addresses)

    monkeypatch.setattr(ha_module, "drop_addresses", drop_hanging_once)
    notes: list[str] = []
    ha = HaState(Role.STARTING)
    supervisor = KeepalivedSupervisor(
        tmp_path, ha, lambda m, d: notes.append(m), lambda: "/bin/false"
    )

    async def main() -> int:
        await supervisor.configure(config(address="198.18.0.2"))
        ha.set(Role.ACTIVE)  # as keepalived's FIFO would have said before it died
        for _ in range(200):  # bounded: 10 s
            if supervisor.restarts >= 2:
                break
            await asyncio.sleep(0.05)
        restarts = supervisor.restarts
        await supervisor.close()
        return restarts

    restarts = asyncio.run(main())
    assert any("supervision failed: TimeoutExpired" in n for n in notes), notes
    assert restarts >= 2  # started again after the failed turn, and again
    assert ha.role is Role.STOPPED  # not left ACTIVE with no keepalived


def test_doctor_warns_that_conntrackd_sync_needs_an_isolated_link_with_nat_services() -> None:
    if find_keepalived() is None:
        pytest.skip("keepalived is not installed here (CI installs it)")
    nat = {
        "label": "Nat",
        "vip": "198.18.1.100",
        "ports": [4000],
        "mode": "l4-nat",
        "real_servers": [{"label": "a", "address": "198.18.2.11"}],
    }
    plain = config()
    with_nat = plain.model_copy(update={"virtual_services": [c.VirtualService.model_validate(nat)]})
    assert not any(f.check == "conntrackd" for f in doctor_findings(plain))
    [warning] = [f for f in doctor_findings(with_nat) if f.check == "conntrackd"]
    assert warning.level is Level.WARNING
    assert "unauthenticated" in warning.message and "isolated segment" in warning.message
