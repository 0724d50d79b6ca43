"""simulate-day: determinism, every policy runs, bad scenarios exit 2, no scipy for the daemon."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from edge.cli import main
from edge.cli.simulate_day import register_simulate_day
from edge.scheduler.optimal import solve_day
from edge.scheduler.policies import POLICY_NAMES
from edge.scheduler.scenario import load_scenario
from edge.scheduler.simday import simulate_day
from tests.edge.scheduler_fixtures import SMALL_SCENARIO, write_small

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = ROOT / "edge" / "scheduler" / "scenarios"


def test_daemon_import_path_has_no_scipy_numpy_matplotlib() -> None:
    code = (
        "import sys\n"
        "import edge.scheduler, edge.scheduler.core, edge.scheduler.policies\n"
        "import edge.scheduler.service, edge.scheduler.config, edge.scheduler.simday\n"
        "import edge.cli, edge.cli.commands\n"
        "from edge.cli import build_parser\n"
        "build_parser()\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('scipy', 'numpy', 'matplotlib'))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == ""


def test_same_seed_same_kpis_and_seeds_differ(tmp_path: Path) -> None:
    sc = load_scenario(write_small(tmp_path))
    a = simulate_day(sc, "smart", seed=7).kpis
    b = simulate_day(sc, "smart", seed=7).kpis
    c = simulate_day(sc, "smart", seed=8).kpis
    assert a == b
    assert a != c


def test_small_day_every_policy_and_event(tmp_path: Path) -> None:
    sc = load_scenario(write_small(tmp_path))
    naive = simulate_day(sc, "naive", seed=3).kpis
    smart = simulate_day(sc, "smart", seed=3).kpis
    bound = solve_day(sc, seed=3).kpis
    for k in (naive, smart):
        assert k["swaps_requested"] == sum(sc.arrivals.swaps_per_hour)
        assert k["cap_violations"] == 0  # the cap and the 18:00 dispatch limit
        assert float(k["max_limit_latency_s"]) <= 5.0  # type: ignore[arg-type]
        assert float(k["min_handover_soc_pct"]) >= 90.0  # type: ignore[arg-type]
    assert smart["swaps_waited"] <= naive["swaps_waited"]
    assert bound["lower_bound"] is True
    # The LP is a lower bound: no policy is cheaper.
    assert float(bound["energy_cost"]) <= float(smart["energy_cost"]) <= float(naive["energy_cost"])  # type: ignore[arg-type]
    # Integer ready flags only tighten it, and it stays a bound.
    # optimal (whole packs): its best schedule's KPIs, with its bound between the LP's and it.
    tight = solve_day(sc, seed=3, integer_ready_s=10).kpis
    assert tight["policy"] == "optimal" and tight["lower_bound"] is False
    b, best = float(tight["bound_cost"]), float(tight["energy_cost"])  # type: ignore[arg-type]
    assert float(bound["energy_cost"]) - 1e-6 <= b <= best + 1e-6
    assert b <= float(smart["energy_cost"])  # type: ignore[arg-type]
    assert float(tight["gap_pct"]) == pytest.approx((best - b) / best * 100, abs=0.01)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("scenario", "policy"),
    [
        ("city-taxi-day", "optimal-lp"),
        ("grid-emergency-day", "smart"),
        ("demand-charge-day", "naive"),
        ("heat-wave-day", "naive"),
    ],
)
def test_shipped_scenarios_smoke(
    scenario: str, policy: str, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(
        ["simulate-day", "--scenario", str(SCENARIOS / f"{scenario}.yaml"), "--policy", policy]
    )
    assert rc == 0
    kpis = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in (
        "swaps_requested",
        "swaps_served",
        "swaps_waited",
        "wait_minutes_total",
        "energy_kwh",
        "energy_cost",
        "peak_grid_kw",
        "peak_period_energy_kwh",
        "min_handover_soc_pct",
        "cap_violations",
    ):
        assert key in kpis
    assert kpis["swaps_requested"] == 150
    assert kpis["cap_violations"] == 0
    assert kpis["peak_grid_kw"] <= 600.0 + 0.1


def test_cli_progress_and_plot(tmp_path: Path) -> None:
    png = tmp_path / "day.png"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "edge",
            "simulate-day",
            "--scenario",
            str(write_small(tmp_path)),
            "--policy",
            "naive",
            "--seed",
            "2",
            "--progress",
            "--plot",
            str(png),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1])["policy"] == "naive"
    assert "100.0 %" in out.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("old", "new", "marker", "expect"),
    [
        (
            "  cap_kw: 150\n",
            "  cap_kw: lots\n",
            "cap_kw",
            "grid.cap_kw: Input should be a valid number",
        ),
        ("  slots: 4\n", "  slots: 4\n  colour: red\n", "colour", "station.colour: unknown key"),
        (
            "    capacity_kwh: 70\n",
            "    capacity_kwh: -70\n",
            "capacity_kwh",
            "station.pack.capacity_kwh: Input should be greater than 0",
        ),
        (
            '["22:00-06:00"]',
            '["23:00-06:00"]',
            "  periods:",
            "grid.tariff.periods: Value error, tariff does not cover 24 h: "
            "no period for 22:00-23:00",
        ),
        (
            'until: "19:00", power_kw: 60}',
            'until: "19:00", power_kw: 60, factor: 0.5}',
            "kind: dispatch_limit",
            "events.0: Value error, dispatch_limit does not take factor",
        ),
    ],
)
def test_bad_scenario_exits_2_naming_file_line_field(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    old: str,
    new: str,
    marker: str,
    expect: str,
) -> None:
    assert old in SMALL_SCENARIO
    text = SMALL_SCENARIO.replace(old, new, 1)
    line = next(i for i, ln in enumerate(text.splitlines(), 1) if marker in ln)
    path = write_small(tmp_path, text)
    rc = main(["simulate-day", "--scenario", str(path), "--policy", "smart"])
    err = capsys.readouterr()
    assert rc == 2
    assert err.out == ""
    assert err.err.startswith(f"{path}:{line}: {expect}"), err.err


def test_unknown_policy_is_bad_input(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as ei:
        main(["simulate-day", "--scenario", str(write_small(tmp_path)), "--policy", "greedy"])
    assert ei.value.code == 2


def test_the_cli_offers_every_policy_by_the_scheduler_s_names() -> None:
    # simulate-day's parser imports nothing heavy, so it spells the names out; they must agree.
    parser = argparse.ArgumentParser()
    register_simulate_day(parser.add_subparsers(), {})
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    policy = next(a for a in sub.choices["simulate-day"]._actions if a.dest == "policy")
    assert tuple(policy.choices or ()) == POLICY_NAMES


def test_export_request_served_from_surplus_and_lp_refuses_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = (
        SMALL_SCENARIO.replace(
            "  charger_rating_kw: 60\n", "  charger_rating_kw: 60\n  bidirectional: true\n"
        )
        .replace("  cap_kw: 150\n", "  cap_kw: 150\n  bidirectional: true\n  max_export_kw: 100\n")
        .replace(
            "events:\n",
            'events:\n  - {kind: export_request, at: "02:00", until: "03:00", power_kw: 100}\n',
        )
    )
    path = write_small(tmp_path, text)
    k = simulate_day(load_scenario(path), "smart", seed=1).kpis
    # Quiet night, four full packs, reserve of one: the three others export (down to 50 %).
    assert float(k["export_kwh"]) > 50  # type: ignore[arg-type]
    assert k["swaps_served"] == k["swaps_requested"]
    assert k["cap_violations"] == 0
    assert main(["simulate-day", "--scenario", str(path), "--policy", "optimal"]) == 1
    assert "does not model export" in capsys.readouterr().err
