"""Text turn latency: in-process (Assistant.handle), through the Flask app (WSGI, in-process), and
over real HTTP to `python -m assistant serve` on loopback.

    python bench/bench_turns.py [--conversations 200] [--http]

Each conversation is a full senior-card application (5 turns, one SQLite insert) or a meal
booking (4 turns). Prints one JSON line per mode. Bounded in count; loopback only.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from assistant.config import load_settings  # noqa: E402
from assistant.nlu.idcard import check_digit  # noqa: E402
from assistant.types import UserMessage  # noqa: E402
from runtime.container import build_runtime  # noqa: E402


def make_id(i: int) -> str:
    first17 = f"110101194503{(i % 28) + 1:02d}{i % 1000:03d}"
    return first17 + check_digit(first17)


def scripts(i: int) -> list[str]:
    if i % 2:
        return ["我想订饭", "明天中午", "两份", "去食堂吃", "对"]
    return ["我想办老年证", make_id(i), "王建国", "13800138000", "对"]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))], 3)


def report(mode: str, latencies: list[float], extra: dict | None = None) -> None:
    print(json.dumps({"bench": "text_turn", "mode": mode, "turns": len(latencies),
                      "p50_ms": round(statistics.median(latencies), 3), "p95_ms": pct(latencies, 95),
                      "p99_ms": pct(latencies, 99), "max_ms": round(max(latencies), 3),
                      "machine": f"{platform.machine()} {os.cpu_count()} cores", **(extra or {})},
                     ensure_ascii=False), flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--conversations", type=int, default=200)
    parser.add_argument("--http", action="store_true", help="also measure over HTTP against a real server")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-turns-"))
    env = {**os.environ, "DATA_DIR": str(tmp), "DATABASE_URL": f"sqlite:///{tmp / 'bench.db'}"}
    runtime = build_runtime(load_settings(env))

    latencies: list[float] = []
    for i in range(args.conversations):
        for text in scripts(i):
            t0 = time.perf_counter()
            runtime.assistant.handle(UserMessage(sender_id=f"c{i}", text=text, channel="bench"))
            latencies.append((time.perf_counter() - t0) * 1000)
    report("in_process", latencies)

    from channels.app import create_app

    client = create_app(runtime).test_client()
    latencies = []
    for i in range(args.conversations):
        for text in scripts(i):
            t0 = time.perf_counter()
            response = client.post("/webhooks/rest/webhook", json={"sender": f"w{i}", "message": text})
            latencies.append((time.perf_counter() - t0) * 1000)
            assert response.status_code == 200
    report("wsgi_in_process", latencies)

    if args.http:
        port = free_port()
        server = subprocess.Popen([sys.executable, "-m", "assistant", "serve", "--port", str(port)],
                                  cwd=ROOT, env=env, stderr=subprocess.DEVNULL)
        try:
            deadline = time.time() + 120
            while time.time() < deadline:
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1)
                    break
                except OSError:
                    time.sleep(0.2)
            latencies = []
            for i in range(args.conversations):
                for text in scripts(i):
                    body = json.dumps({"sender": f"h{i}", "message": text}).encode()
                    req = urllib.request.Request(f"http://127.0.0.1:{port}/webhooks/rest/webhook", body,
                                                 {"Content-Type": "application/json"})
                    t0 = time.perf_counter()
                    urllib.request.urlopen(req, timeout=10).read()
                    latencies.append((time.perf_counter() - t0) * 1000)
            report("http_loopback_waitress", latencies, {"client": "sequential urllib"})
        finally:
            server.terminate()
            server.wait(timeout=10)


if __name__ == "__main__":
    main()
