"""A community notice by voice to N residents through a loopback fake of Twilio's Calls API, placed
by real worker processes at the configured calls per second; optionally a worker killed with
kill -9 mid-broadcast and a second one finishing the job.

    python bench/bench_outreach.py --residents 1000 --rate 20 [--kill-at 0.3]

Prints one JSON object: calls placed, distinct residents called, residents called twice, lost,
the achieved rate (calls per second while placing), the kill point and the recovery time.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import parse_qs, urlparse

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from fixtures.twilio_world import ACCOUNT_SID, AUTH_TOKEN, FROM_NUMBER, start_twilio_api  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--residents", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=20.0, help="outreach.calls_per_second")
    parser.add_argument("--api-delay", type=float, default=0.05, help="seconds Twilio takes to answer a create")
    parser.add_argument("--kill-at", type=float, default=0.0, help="kill -9 the worker after this share is placed")
    args = parser.parse_args()

    from assistant.config import load_settings
    from backend.infra.models import Resident
    from backend.outreach.notices import Audience
    from runtime.container import build_runtime

    api = start_twilio_api()
    api.delay_seconds = args.api_delay
    tmp = Path(tempfile.mkdtemp(prefix="bench-outreach-"))
    data_dir = tmp / "var"
    data_dir.mkdir()
    env = {"DATA_DIR": str(data_dir), "DATABASE_URL": f"sqlite:///{data_dir / 'bench.db'}",
           "TWILIO_ACCOUNT_SID": ACCOUNT_SID, "TWILIO_AUTH_TOKEN": AUTH_TOKEN, "TWILIO_FROM_NUMBER": FROM_NUMBER,
           "TWILIO_API_BASE_URL": api.base_url, "PUBLIC_BASE_URL": "https://bench.invalid",
           "OUTREACH_CALLS_PER_SECOND": str(args.rate), "JOB_LEASE_SECONDS": "2"}
    runtime = build_runtime(load_settings(env), nlu=object())
    cipher = runtime.cipher
    phones = [f"1350000{i:04d}" for i in range(args.residents)]
    with runtime.db_sessions() as s, s.begin():
        for phone in phones:
            s.add(Resident(phone_hash=cipher.blind_index(phone, "phone"), phone_enc=cipher.encrypt(phone), grid_id="G01"))
    # Urgent (a flood warning): quiet hours do not hold it, so the bench measures sending at any hour.
    notice = runtime.outreach.notices.create("防汛", "今晚有暴雨，请关好门窗。", Audience("all"), "voice", "bench",
                                             urgent=True)
    command = [sys.executable, "-m", "runtime.cli_worker", "--idle-sleep", "0.05"]
    proc_env = {**os.environ, **env}
    started = time.perf_counter()
    worker = subprocess.Popen(command, cwd=ROOT, env=proc_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    killed_at = None
    recovery = None
    if args.kill_at:
        while len(api.calls) < args.residents * args.kill_at:
            time.sleep(0.01)
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
        killed_at = len(api.calls)
        restart = time.perf_counter()
        worker = subprocess.Popen(command, cwd=ROOT, env=proc_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + args.residents / args.rate * 3 + 120
    while len(api.calls) < args.residents and time.time() < deadline:
        time.sleep(0.05)
    if args.kill_at:
        recovery = round(time.perf_counter() - restart, 1)
    elapsed = time.perf_counter() - started
    time.sleep(1.0)  # anything still in flight
    worker.send_signal(signal.SIGTERM)
    worker.wait(30)
    ids = [parse_qs(urlparse(c.url).query)["call"][0] for c in api.calls]
    called = [c.to for c in api.calls]
    first, last = (min(c.created for c in api.calls), max(c.created for c in api.calls)) if api.calls else (0, 0)
    result = {
        "residents": args.residents, "rate_configured": args.rate, "api_delay_s": args.api_delay,
        "calls_placed": len(api.calls), "distinct_residents": len(set(called)),
        "residents_called_twice": len(called) - len(set(called)), "calls_asked_twice": len(ids) - len(set(ids)),
        "lost": args.residents - len(set(called)),
        "achieved_rate": round((len(api.calls) - 1) / (last - first), 2) if len(api.calls) > 1 else None,
        "seconds": round(elapsed, 1), "killed_after_calls": killed_at, "recovery_s": recovery, "notice": notice,
        "machine": f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}",
    }
    print(json.dumps(result, ensure_ascii=False))
    api.close()
    return 0 if result["lost"] == 0 and result["residents_called_twice"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
