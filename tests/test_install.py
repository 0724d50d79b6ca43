"""systemd/install.sh into a scratch root: every file it writes, the unit verified by
systemd-analyze, the unit's ExecStart run as the service user in a mount namespace where /etc,
/usr and the install are read-only (as ProtectSystem=strict makes them) against simulators,
an upgrade that keeps the previous release and backs up the state, rollback, an uninstall
that keeps the state, and an offline install from a wheelhouse in a namespace with no network.
Root is needed (unshare, setpriv), as on the station."""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from packaging.markers import Marker
from packaging.utils import canonicalize_name

from sim.benchcfg import bench_config
from tests.conftest import Broker
from tests.release_fixtures import ROOT, clean_env, read_lock

pytestmark = pytest.mark.slow
USER = "nobody"  # any unprivileged account; install.sh --user names it


def install(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(
        ["bash", str(ROOT / "systemd" / "install.sh"), *args, "--root", str(root)],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    return r


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    # Outside pytest's 0700 temp tree: the service user must be able to reach the install.
    root = Path(tempfile.mkdtemp(prefix="swapd-install-", dir="/var/tmp"))
    root.chmod(0o755)
    install(root, "--user", USER)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def files_under(root: Path) -> set[str]:
    """Every path written, with the release venvs' insides left out (pip's own files)."""
    out = set()
    for dirpath, dirnames, filenames in os.walk(root):
        rel = Path(dirpath).relative_to(root)
        if len(rel.parts) == 4 and rel.parts[:3] == ("opt", "swapd", "releases"):
            dirnames.clear()
            continue
        out.update(str(rel / n) for n in dirnames + filenames)
    return out


def test_scratch_install_writes_exactly_these_files(scratch: Path) -> None:
    (release,) = (scratch / "opt/swapd/releases").iterdir()
    assert files_under(scratch) == {
        "etc",
        "etc/swapd",
        "etc/swapd/station.yaml",
        "etc/swapd/swapd.env",
        "etc/swapd/tls",
        "etc/systemd",
        "etc/systemd/system",
        "etc/systemd/system/swapd.service",
        "opt",
        "opt/swapd",
        "opt/swapd/current",
        "opt/swapd/releases",
        f"opt/swapd/releases/{release.name}",
    }
    assert (scratch / "opt/swapd/current").resolve() == release
    assert stat.S_IMODE((scratch / "etc/swapd/swapd.env").stat().st_mode) == 0o640
    cfg = yaml.safe_load((scratch / "etc/swapd/station.yaml").read_text())
    assert cfg["station"]["state_dir"] == "/var/lib/swapd"
    assert cfg["station"]["ctl_socket"] == "/run/swapd/ctl.sock"
    assert (release / "share/swapd/README.md").is_file()
    out = subprocess.run(
        [str(release / "bin/swapd"), "--version"], capture_output=True, text=True, check=True
    ).stdout
    assert release.name.split("-", 1)[1] in out


def unit_for(scratch: Path, dst: Path) -> Path:
    text = (scratch / "etc/systemd/system/swapd.service").read_text()
    for p in ("/opt/swapd", "/etc/swapd"):
        text = text.replace(p, f"{scratch}{p}")
    dst.write_text(text)
    return dst


def test_systemd_analyze_verify_passes_on_the_unit_pointed_at_the_install(
    scratch: Path, tmp_path: Path
) -> None:
    unit = unit_for(scratch, tmp_path / "swapd.service")
    r = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0 and r.stderr.strip() == "", r.stderr


def exec_start(unit: Path) -> list[str]:
    lines = [ln for ln in unit.read_text().splitlines() if ln.startswith("ExecStart=")]
    return lines[0].removeprefix("ExecStart=").split()


@pytest.mark.timeout(150)
def test_exec_start_as_service_user_with_read_only_system_against_simulators(
    scratch: Path, mosquitto: Broker, tmp_path: Path
) -> None:
    work = Path(tempfile.mkdtemp(prefix="swapd-run-", dir="/var/tmp"))
    try:
        work.chmod(0o755)
        # Point the installed config at simulators on free ports (an operator's edit).
        bench = bench_config(
            ROOT / "config/station.yaml", tmp_path / "bench", bus="slcan", mqtt_port=mosquitto.port
        )
        b = yaml.safe_load(bench.read_text())
        installed = scratch / "etc/swapd/station.yaml"
        cfg = yaml.safe_load(installed.read_text())
        for k in ("chargers", "slots", "robot", "mqtt"):
            cfg[k] = b[k]
        installed.write_text(yaml.safe_dump(cfg, sort_keys=False))
        state = work / "state"
        state.mkdir()
        shutil.chown(state, USER)
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(str(work / "notify"))
        (work / "notify").chmod(0o777)
        notify.settimeout(60)
        cmd = " ".join(exec_start(unit_for(scratch, tmp_path / "swapd.service")))
        script = f"""set -e
for d in /etc /usr {scratch}/opt/swapd {scratch}/etc; do
  mount --bind "$d" "$d"; mount -o remount,bind,ro "$d"
done
mount -t tmpfs -o mode=0755 tmpfs /var/lib; mkdir /var/lib/swapd
mount --bind {state} /var/lib/swapd
mount -t tmpfs -o mode=0755 tmpfs /run; mkdir -m 0750 /run/swapd; chown {USER} /run/swapd
cd /var/lib/swapd
exec setpriv --reuid={USER} --regid=$(id -g {USER}) --clear-groups --no-new-privs {cmd}
"""
        sim = subprocess.Popen(
            [str(Path(sys.executable).parent / "swapd"), "sim", "--config", str(bench)],
            env=clean_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        log = (tmp_path / "run.log").open("wb")
        daemon: subprocess.Popen[bytes] | None = None
        try:
            assert sim.stdout is not None
            assert json.loads(sim.stdout.readline())["ready"] is True
            daemon = subprocess.Popen(
                ["unshare", "--mount", "--propagation", "private", "bash", "-c", script],
                env=clean_env(NOTIFY_SOCKET=str(work / "notify")),
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
            # STATUS= lines may come first (the health service starts before READY=1 is sent).
            deadline = time.monotonic() + 60
            msg = ""
            while "READY=1" not in msg.splitlines():
                notify.settimeout(max(0.1, deadline - time.monotonic()))
                try:
                    msg = notify.recv(4096).decode()
                except TimeoutError:
                    pytest.fail("no READY=1\n" + (tmp_path / "run.log").read_text()[-4000:])
            assert daemon.poll() is None
            daemon.send_signal(signal.SIGTERM)
            assert daemon.wait(timeout=40) == 0, (tmp_path / "run.log").read_text()[-4000:]
        finally:
            for p in (daemon, sim):
                if p is not None and p.poll() is None:
                    p.kill()
                    p.wait()
            if sim.stdout is not None:
                sim.stdout.close()
            log.close()
            notify.close()
        # The state went where StateDirectory= puts it, written by the service user.
        names = {p.name for p in state.iterdir()}
        assert {"swap-journal.sqlite", "outbox.sqlite"} <= names, names
        assert all(p.owner() == USER for p in state.iterdir())
    finally:
        shutil.rmtree(work, ignore_errors=True)


@pytest.mark.timeout(500)  # five runs of install.sh, each a pip install (one refused)
def test_upgrade_keeps_previous_and_backs_up_state_rollback_and_uninstall(
    tmp_path: Path,
) -> None:
    root = tmp_path / "root"
    install(root, "--user", USER)
    (first,) = (root / "opt/swapd/releases").iterdir()
    state = root / "var/lib/swapd"
    state.mkdir(parents=True)
    (state / "outbox.sqlite").write_bytes(b"state of the first release")
    (root / "etc/swapd/station.yaml").write_text(
        (root / "etc/swapd/station.yaml").read_text() + "# operator's edit\n"
    )
    # A release that refuses the station's config (an old format) leaves the running one alone.
    cfg = root / "etc/swapd/station.yaml"
    good = cfg.read_text()
    cfg.write_text(good.replace("version: 2", "version: 1", 1))
    r = subprocess.run(
        ["bash", str(ROOT / "systemd/install.sh"), "--root", str(root), "--user", USER],
        env=clean_env(SWAPD_BUILD_COMMIT="0ldc0nf1g000"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2 and "running release is unchanged" in r.stderr, r.stderr[-3000:]
    assert [p.name for p in (root / "opt/swapd/releases").iterdir()] == [first.name]
    assert (root / "opt/swapd/current").resolve() == first
    assert not (root / "opt/swapd/previous").exists()
    cfg.write_text(good)

    # A different release: same code, another recorded commit.
    env_commit = "feedfacecafe"
    r = subprocess.run(
        ["bash", str(ROOT / "systemd/install.sh"), "--root", str(root), "--user", USER],
        env=clean_env(SWAPD_BUILD_COMMIT=env_commit),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    current = (root / "opt/swapd/current").resolve()
    assert current.name.endswith(env_commit)
    assert (root / "opt/swapd/previous").resolve() == first
    assert (state / "backup" / first.name / "outbox.sqlite").read_bytes() == (
        b"state of the first release"
    )
    assert (root / "etc/swapd/station.yaml").read_text().endswith("# operator's edit\n")

    install(root, "rollback")
    assert (root / "opt/swapd/current").resolve() == first
    assert (root / "opt/swapd/previous").resolve() == current

    install(root, "uninstall")
    assert not (root / "opt/swapd").exists()
    assert not (root / "etc/systemd/system/swapd.service").exists()
    assert (state / "outbox.sqlite").exists() and (root / "etc/swapd/station.yaml").exists()


@pytest.mark.timeout(240)
def test_offline_install_from_a_wheelhouse_without_network(tmp_path: Path) -> None:
    """`systemd/wheelhouse.sh` (what `make wheelhouse` runs; here for this machine's
    architecture only) gathers the wheels; `install.sh --wheelhouse` installs them in a network
    namespace with no network and no pip configuration, as on a station without internet, and
    the release holds exactly the locked versions."""
    wheelhouse = tmp_path / "wheelhouse"
    r = subprocess.run(
        ["bash", str(ROOT / "systemd/wheelhouse.sh"), str(wheelhouse), platform.machine()],
        env=clean_env(PYTHON=sys.executable),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert r.returncode == 0, r.stderr[-4000:]
    assert (wheelhouse / "daemon.txt").read_bytes() == (
        ROOT / "requirements/daemon.txt"
    ).read_bytes()
    assert len(list(wheelhouse.glob("swapd-*.whl"))) == 1

    root = Path(tempfile.mkdtemp(prefix="swapd-offline-", dir="/var/tmp"))
    try:
        env = {k: v for k, v in clean_env().items() if not k.startswith("PIP_")}
        env["PIP_CONFIG_FILE"] = os.devnull  # no index, no find-links but the wheelhouse
        r = subprocess.run(
            [
                "unshare",
                "--net",
                "bash",
                str(ROOT / "systemd/install.sh"),
                "--wheelhouse",
                str(wheelhouse),
                "--root",
                str(root),
                "--user",
                USER,
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
        release = (root / "opt/swapd/current").resolve()
        listed = subprocess.run(
            [str(release / "bin/python"), "-m", "pip", "list", "--format=json"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        installed = {
            canonicalize_name(p["name"]): p["version"]
            for p in json.loads(listed)
            if canonicalize_name(p["name"]) not in ("pip", "setuptools", "swapd")
        }
        locked = {
            name: str(pin.version)
            for name, pins in read_lock(ROOT / "requirements/daemon.txt").items()
            for pin in pins
            if not pin.marker or Marker(pin.marker).evaluate()
        }
        assert installed == locked
        out = subprocess.run(
            [str(release / "bin/swapd"), "--version"], capture_output=True, text=True, check=True
        ).stdout
        assert release.name.split("-", 1)[1] in out
    finally:
        shutil.rmtree(root, ignore_errors=True)
