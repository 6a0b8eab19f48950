"""Restart-to-ready of a web process with the NLU model already on disk (issue 17).

    python bench/bench_ready.py [--runs 5] [--mode serve|gunicorn] [--workers 1] [--fresh-tmp]

Each run starts the server as a subprocess on a free loopback port (own DATA_DIR with a migrated
SQLite store, the shared MODEL_DIR with the trained model), polls GET /readyz every 50 ms and
records, from the moment the process is started:
- `port_s`: the first HTTP answer of any kind (the port is bound),
- `ready_s`: the first /readyz 200 (every check, the NLU model included, is loaded),
- `turn_s`: the answer to a first REST turn sent right after ready (a turn must not wait for
  anything that /readyz already called ready),
- `not_ready_503`: how many 503s /readyz gave before the 200,
- `cpu_s_at_ready`: CPU seconds the server's processes had used by then (on a shared machine the
  wall time depends on the neighbours; this does not), with the 1-minute load average.
Then the process group gets SIGTERM. `--fresh-tmp` gives every run an empty TMPDIR, as systemd's
PrivateTmp=yes does at each restart (jieba then rebuilds its dictionary cache).

`serve` is `python -m assistant serve --no-worker`; `gunicorn` is the production shape,
`gunicorn -c deploy/gunicorn.conf.py runtime.wsgi:app` (WEB_CONCURRENCY=--workers).
Before the runs the model is trained if it is missing (`python -m assistant train`, not timed).
Loopback only, bounded in time; prints one JSON line per run and a summary line.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT_S = 120.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def request(port: int, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes] | None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, response.read()
    except OSError:
        return None
    finally:
        connection.close()


def cpu_seconds(root_pid: int) -> float:
    """user + system CPU time of a process and its children so far (from /proc): on a shared
    machine the wall time to ready depends on the neighbours, this does not."""
    tick = os.sysconf("SC_CLK_TCK")
    stats: dict[int, tuple[int, float]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            stats[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
    total, todo = 0.0, [root_pid]
    while todo:
        pid = todo.pop()
        total += stats.get(pid, (0, 0.0))[1]
        todo.extend(child for child, (parent, _) in stats.items() if parent == pid)
    return total


def command(mode: str, port: int) -> list[str]:
    if mode == "serve":
        return [sys.executable, "-m", "assistant", "serve", "--no-worker", "--port", str(port)]
    return [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "deploy" / "gunicorn.conf.py"), "runtime.wsgi:app"]


def one_run(mode: str, workers: int, fresh_tmp: bool, base_env: dict[str, str]) -> dict[str, object]:
    port = free_port()
    data_dir = tempfile.mkdtemp(prefix="bench-ready-data-")
    env = {**base_env, "DATA_DIR": data_dir, "PORT": str(port), "GUNICORN_BIND": f"127.0.0.1:{port}",
           "WEB_CONCURRENCY": str(workers)}
    env.pop("DATABASE_URL", None)
    env.pop("REDIS_URL", None)
    if fresh_tmp:
        env["TMPDIR"] = tempfile.mkdtemp(prefix="bench-ready-tmp-")
    # The deploy's ExecStartPre (migrations) is not part of a restart: run it first, untimed.
    subprocess.run([sys.executable, "-m", "assistant", "db", "upgrade"], cwd=ROOT, env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = open(Path(data_dir) / "server.log", "wb")  # noqa: SIM115 (closed below)
    started = time.monotonic()
    proc = subprocess.Popen(command(mode, port), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    port_s = ready_s = None
    not_ready = 0
    try:
        while time.monotonic() - started < TIMEOUT_S:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}; log in {data_dir}/server.log")
            answer = request(port, "GET", "/readyz")
            if answer is not None:
                elapsed = time.monotonic() - started
                port_s = port_s if port_s is not None else elapsed
                if answer[0] == 200:
                    ready_s, ready_cpu = elapsed, cpu_seconds(proc.pid)
                    break
                not_ready += 1
            time.sleep(0.05)
        if ready_s is None:
            raise RuntimeError(f"not ready within {TIMEOUT_S} s; log in {data_dir}/server.log")
        turn_started = time.monotonic()
        body = json.dumps({"sender": "bench-ready", "message": "我想办老年证"}).encode()
        answer = request(port, "POST", "/webhooks/rest/webhook", body)
        turn_s = time.monotonic() - turn_started
        ok = answer is not None and answer[0] == 200 and "老年证" in answer[1].decode("utf-8", "replace")
        return {"mode": mode, "port_s": round(port_s, 3), "ready_s": round(ready_s, 3),
                "cpu_s_at_ready": round(ready_cpu, 2), "load_avg_1m": round(os.getloadavg()[0], 2),
                "not_ready_503": not_ready, "turn_s": round(turn_s, 3), "turn_ok": ok}
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--mode", choices=["serve", "gunicorn"], default="serve")
    parser.add_argument("--workers", type=int, default=1, help="gunicorn workers (WEB_CONCURRENCY)")
    parser.add_argument("--fresh-tmp", action="store_true", help="empty TMPDIR per run (systemd PrivateTmp)")
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH"}}
    env.setdefault("MODEL_DIR", str(ROOT / "models"))
    env["LOG_FORMAT"] = "text"
    # The model is trained once, as a deploy's build step does; restarts then only load it.
    trained = subprocess.run([sys.executable, "-m", "assistant", "train", "--if-missing"], cwd=ROOT, env=env,
                             check=True, capture_output=True, text=True)
    print(json.dumps({"train": json.loads(trained.stdout.strip().splitlines()[-1])}, ensure_ascii=False),
          flush=True)
    runs = []
    for _ in range(args.runs):
        result = one_run(args.mode, args.workers, args.fresh_tmp, env)
        runs.append(result)
        print(json.dumps(result, ensure_ascii=False), flush=True)
    ready = [float(r["ready_s"]) for r in runs]  # type: ignore[arg-type]
    print(json.dumps({
        "summary": {"mode": args.mode, "workers": args.workers, "fresh_tmp": args.fresh_tmp, "runs": len(runs),
                    "ready_s_median": round(statistics.median(ready), 3), "ready_s_max": round(max(ready), 3),
                    "ready_s_min": round(min(ready), 3),
                    "cpu_s_at_ready_median": round(statistics.median(float(r["cpu_s_at_ready"]) for r in runs), 2),  # type: ignore[arg-type]
                    "port_s_median": round(statistics.median(float(r["port_s"]) for r in runs), 3),  # type: ignore[arg-type]
                    "turns_ok": sum(bool(r["turn_ok"]) for r in runs)},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "load_avg_1m": round(os.getloadavg()[0], 2)}}, ensure_ascii=False), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
