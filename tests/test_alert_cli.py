"""`alerts replay` and `alerts simulate` (reduced size here; full size in the CLI and bench)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from runtime import cli_alerts

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).parent / "fixtures" / "alerts"
READINGS, HOUSEHOLDS = FIXTURES / "readings.jsonl", FIXTURES / "households.yml"


def run(capsys, *argv: str) -> tuple[int, list[dict], str]:
    code = cli_alerts.main(list(argv))
    out, err = capsys.readouterr()
    return code, [json.loads(line) for line in out.splitlines() if line.strip()], err


def test_replay_prints_every_alert_event_as_a_json_line(capsys) -> None:
    code, lines, err = run(capsys, "replay", str(READINGS), "--households", str(HOUSEHOLDS))
    assert code == 0
    brief = [(x["household"], x["rule"], x["event"], x["at"][11:16], x["notify"]) for x in lines]
    assert brief == [
        ("H002", "gas_leak", "raised", "09:30", ["fire_119", "family", "doctor", "grid_worker", "senior"]),
        ("H002", "gas_leak", "escalated", "09:35", ["backup_grid_worker"]),
        ("H002", "gas_leak", "escalated", "09:40", ["community_leader"]),
        ("H002", "gas_leak", "cleared", "09:50",
         ["family", "doctor", "grid_worker", "backup_grid_worker", "community_leader"]),
        ("H001", "no_water", "raised", "10:00", ["grid_worker", "family"]),
        ("H001", "no_water", "escalated", "10:15", ["backup_grid_worker"]),
        ("H001", "no_water", "escalated", "10:30", ["community_leader"]),
        ("H001", "no_water", "cleared", "11:00", ["grid_worker", "family", "backup_grid_worker", "community_leader"]),
        ("H002", "sensor_offline", "raised", "11:55", ["grid_worker"]),
    ]
    assert all(set(x) >= {"household", "rule", "level", "at", "event", "notify"} for x in lines)
    assert lines[0]["level"] == "severe" and lines[0]["at"] == "2026-11-25T09:30:00+08:00"
    summary = json.loads(err.strip().splitlines()[-1])
    assert summary["kept_aside"] == 1 and summary["readings"] == 68  # H999 is nobody we know


def test_replay_survives_bad_lines_and_unsorted_input(capsys, tmp_path: Path) -> None:
    lines = READINGS.read_text(encoding="utf-8").splitlines()
    messy = tmp_path / "messy.jsonl"
    messy.write_text("\n".join([*reversed(lines), "not json", '{"household": "H001", "device": "W-H001", '
                                '"kind": "water", "value": 1, "ts": "noon"}']) + "\n", encoding="utf-8")
    code, out, err = run(capsys, "replay", str(messy), "--households", str(HOUSEHOLDS),
                         "--until", "2026-11-25T12:00:00+08:00")
    assert code == 0 and len(out) == 9
    assert "messy.jsonl:69: skipped malformed reading" in err and "ts: must be" in err
    assert json.loads(err.strip().splitlines()[-1])["malformed"] == 2


def test_replay_errors_exit_2(capsys, tmp_path: Path) -> None:
    assert cli_alerts.main(["replay", str(tmp_path / "missing.jsonl")]) == 2
    bad = tmp_path / "households.yml"
    bad.write_text("households:\n  - {id: H1, grid: G1}\n", encoding="utf-8")
    assert cli_alerts.main(["replay", str(READINGS), "--households", str(bad)]) == 2
    assert "senior" in capsys.readouterr().err


def test_simulate_reduced_pilot_detects_every_injected_incident(capsys) -> None:
    code, (report,), _ = run(capsys, "simulate", "--households", "40", "--days", "4", "--incident-rate", "0.15",
                             "--seed", "3")
    assert code == 0
    assert report["households"] == 40 and report["days"] == 4 and report["readings"] > 40 * 4 * 150
    assert sum(report["incidents"].values()) >= 10
    assert report["detected"] == report["incidents"] and report["missed"] == []
    assert set(report["time_to_dispatch_minutes"]) == set(report["incidents"])
    if "gas" in report["time_to_dispatch_minutes"]:
        assert report["time_to_dispatch_minutes"]["gas"]["max"] == 0  # 119 and people at once
    assert report["false_alarms_total"] == sum(report["false_alarms"].values())


@pytest.mark.parametrize("module", ["runtime.cli_alerts"])
def test_replay_as_a_process(module: str) -> None:
    proc = subprocess.run([sys.executable, "-m", module, "replay", str(READINGS), "--households", str(HOUSEHOLDS)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.strip().splitlines()) == 9


def test_import_registers_households_idempotently(capsys, tmp_path: Path, monkeypatch) -> None:
    from sqlalchemy import func, select

    from backend.alerts.store import CareContact, CareDevice, CareHousehold
    from backend.infra import db

    url = f"sqlite:///{tmp_path / 'import.db'}"
    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    monkeypatch.setenv("DATABASE_URL", url)
    for _ in range(2):
        code, (answer,), _ = run(capsys, "import", str(HOUSEHOLDS))
        assert code == 0 and answer == {"households": 2, "devices": 7}
    engine = db.make_engine(url)
    with db.session_factory(engine)() as s:
        assert s.scalar(select(func.count()).select_from(CareHousehold)) == 2
        assert s.scalar(select(func.count()).select_from(CareDevice)) == 7
        # H001: senior, son, grid worker, social worker, doctor + the grid's backup, leader, property
        assert s.scalar(select(func.count()).select_from(CareContact)) == 16
        assert s.scalar(select(CareContact.phone_enc).limit(1)).startswith("1:")  # SM4, never clear
    engine.dispose()
