"""SMS/MMS webhook throughput and latency on loopback with the production server (gunicorn,
2 workers), then a kill -9 of the server under load counting accepted vs stored reports.

    python bench/bench_sms.py [--seconds 10] [--connections 8] [--workers 2] [--database-url URL]

Phase 1 (wrk, C, so the load generator takes little CPU from the 2 server workers): signed
Twilio MMS webhooks (a photo report each, unique sender; 5 % are redeliveries of an earlier
MessageSid) for --seconds. Then the store is checked: exactly one ticket per distinct
MessageSid accepted, none lost, none duplicated.
Phase 2 (Python client, 4 threads): unique MMS webhooks; after 2 s the whole gunicorn process
group gets SIGKILL. Every request answered 200 with a reference must be in the store; requests
that got no answer are then redelivered (as Twilio would) to a restarted server, and must
produce exactly one ticket each.

Loopback only, bounded in count and time; prints JSON lines. Needs `wrk` (apt-get install wrk).
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from twilio.request_validator import RequestValidator  # noqa: E402

TOKEN = "b" * 32
ACCOUNT = "AC" + "a" * 32
PATH = "/webhooks/twilio/sms"
LUA = r"""
local lines = {}
counter = 0  -- global: done() reads it through thread:get
local stride, offset = 1, 0
local threads = {}
function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end
function init(args)
  for line in io.lines(args[1]) do table.insert(lines, line) end
  stride, offset = tonumber(args[2]), id
end
function request()
  local i = offset + counter * stride
  counter = counter + 1
  local line = lines[(i % #lines) + 1]
  local tab = string.find(line, "\t")
  local headers = {}
  headers["Content-Type"] = "application/x-www-form-urlencoded"
  headers["X-Twilio-Signature"] = string.sub(line, 1, tab - 1)
  return wrk.format("POST", nil, headers, string.sub(line, tab + 1))
end
function response(status, headers, body)
  if status ~= 200 then bad = (bad or 0) + 1 end
end
function done(summary, latency, requests)
  local sent = {}
  for _, t in ipairs(threads) do
    table.insert(sent, string.format('{"thread":%d,"requests":%s}', t:get("id"), t:get("counter") or 0))
  end
  io.write("WRK_THREADS [" .. table.concat(sent, ",") .. "]\n")
end
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mms_params(i: int, base: str, tag: str) -> dict[str, str]:
    sid = "MM" + f"{tag}{i:031x}"  # tag: one hex digit per phase
    return {
        "MessageSid": sid, "SmsSid": sid, "SmsMessageSid": sid, "AccountSid": ACCOUNT,
        "From": f"+86139{i % 100_000_000:08d}", "To": "+8610690000", "Body": "阳光小区3号楼门口路灯坏了",
        "NumMedia": "1", "MediaUrl0": f"https://api.twilio.com/2010-04-01/Accounts/{ACCOUNT}/Messages/{sid}/Media/ME{i:032x}",
        "MediaContentType0": "image/jpeg", "FromCity": "BEIJING", "FromCountry": "CN", "NumSegments": "1",
        "SmsStatus": "received", "ApiVersion": "2010-04-01",
    }


def signed(params: dict[str, str], base: str) -> tuple[str, str]:
    return RequestValidator(TOKEN).compute_signature(base + PATH, params), urllib.parse.urlencode(params)


class Gunicorn:
    def __init__(self, env: dict[str, str], port: int, workers: int, worker_class: str = "sync",
                 threads: int = 1) -> None:
        self.port = port
        gunicorn = shutil.which("gunicorn") or "gunicorn"
        self.process = subprocess.Popen(
            [gunicorn, "-w", str(workers), "-k", worker_class, "--threads", str(threads),
             "-b", f"127.0.0.1:{port}", "--backlog", "2048", "--log-level", "warning",
             "--no-control-socket", "runtime.wsgi:app"],  # gunicorn 27's shared per-user socket
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
        )
        deadline = time.time() + 180
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(self.process.stderr.read().decode()[-3000:])
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                conn.request("GET", "/healthz")
                first = conn.getresponse()
                first.read()
                if first.status == 200:
                    # both workers up: ask a few times
                    for _ in range(4):
                        conn.request("GET", "/healthz")
                        conn.getresponse().read()
                    return
            except OSError:
                time.sleep(0.3)
        raise RuntimeError("gunicorn did not start")

    def cpu_seconds(self) -> float:
        """user+system CPU of the master and its workers (one process group), from /proc."""
        total = 0
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == self.process.pid:  # pgrp
                total += int(fields[11]) + int(fields[12])  # utime, stime
        return total / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        os.killpg(self.process.pid, signal.SIGTERM)
        self.process.wait(30)

    def kill9(self) -> None:
        os.killpg(self.process.pid, signal.SIGKILL)  # master and every worker, like a power cut
        self.process.wait(30)


def count_rows(url: str) -> dict[str, int]:
    from sqlalchemy import text

    from backend.infra import db

    engine = db.make_engine(url)
    try:
        with engine.connect() as conn:
            out = {}
            for table in ("tickets", "sms_inbound", "jobs", "ticket_media"):
                out[table] = int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar() or 0)
            out["distinct_idempotency"] = int(conn.execute(
                text("SELECT count(DISTINCT idempotency_key) FROM tickets")).scalar() or 0)
            return out
    finally:
        engine.dispose()


def stored_references(url: str) -> set[str]:
    from sqlalchemy import text

    from backend.infra import db

    engine = db.make_engine(url)
    try:
        with engine.connect() as conn:
            return {r for (r,) in conn.execute(text("SELECT reference FROM tickets"))}
    finally:
        engine.dispose()


def prepare(args: argparse.Namespace, workdir: Path, name: str) -> tuple[dict[str, str], str]:
    from assistant.config import load_settings
    from backend.infra import db
    from runtime.container import make_cipher

    data_dir = workdir / name
    data_dir.mkdir(parents=True)
    url = args.database_url or f"sqlite:///{data_dir / 'bench.db'}"
    port = free_port()
    env = {**os.environ, "DATA_DIR": str(data_dir), "DATABASE_URL": url, "MODEL_DIR": str(args.model_dir),
           "TWILIO_ACCOUNT_SID": ACCOUNT, "TWILIO_AUTH_TOKEN": TOKEN, "PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
           "PORT": str(port)}
    make_cipher(load_settings({"DATA_DIR": str(data_dir)}))  # key file once, before the workers race for it
    db.upgrade(url)
    return env, url


def phase_throughput(args: argparse.Namespace, workdir: Path) -> dict:
    env, url = prepare(args, workdir, "throughput")
    port = int(env["PORT"])
    base = env["PUBLIC_BASE_URL"]
    unique = int(args.rate_hint * args.seconds * 1.5)
    lines = []
    for i in range(unique):
        lines.append(signed(mms_params(i, base, "a"), base))
    # 5 % redeliveries: the same MessageSid again later in the stream.
    stream = []
    for i, line in enumerate(lines):
        stream.append(line)
        if i % 20 == 19:
            stream.append(lines[i - 10])
    requests_file = workdir / "requests.tsv"
    requests_file.write_text("".join(f"{sig}\t{body}\n" for sig, body in stream), encoding="utf-8")
    script = workdir / "bench.lua"
    script.write_text(LUA)
    server = Gunicorn(env, port, args.workers, args.worker_class, args.threads)
    load_before = os.getloadavg()[0]
    try:
        threads = 2
        cpu_before = server.cpu_seconds()
        result = subprocess.run(
            ["wrk", f"-t{threads}", f"-c{args.connections}", f"-d{args.seconds}s", "--latency", "--timeout", "5s",
             "-s", str(script), f"http://127.0.0.1:{port}{PATH}", "--", str(requests_file), str(threads)],
            capture_output=True, text=True, timeout=args.seconds + 60,
        )
        cpu_used = server.cpu_seconds() - cpu_before
    finally:
        server.stop()
    out = result.stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    non_2xx = int(m.group(1)) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", out)) else 0
    errors = re.search(r"Socket errors: (.*)", out)

    def ms(label: str) -> float:
        match = re.search(rf"^\s+{label}%\s+([\d.]+)(us|ms|s)", out, re.M)
        value, unit = float(match.group(1)), match.group(2)
        return round(value / 1000 if unit == "us" else value * 1000 if unit == "s" else value, 2)

    per_thread = json.loads(re.search(r"WRK_THREADS (\[.*\])", out).group(1))
    sent_positions = set()
    for t in per_thread:
        for k in range(int(t["requests"])):
            sent_positions.add((t["thread"] + k * threads) % len(stream))
    sent_sids = {urllib.parse.parse_qs(stream[p][1])["MessageSid"][0] for p in sent_positions}
    rows = count_rows(url)
    return {
        "bench": "sms_webhook", "phase": "throughput", "server": f"gunicorn -w {args.workers} -k {args.worker_class} --threads {args.threads}",
        "database": url.split(":")[0], "connections": args.connections, "seconds": args.seconds,
        "requests": total, "rps": rps, "p50_ms": ms("50"), "p90_ms": ms("90"), "p99_ms": ms("99"),
        "non_2xx": non_2xx, "socket_errors": errors.group(1) if errors else None,
        "distinct_message_sids_sent": len(sent_sids), "tickets": rows["tickets"],
        "sms_inbound": rows["sms_inbound"], "jobs": rows["jobs"],
        # Requests still in flight when wrk stopped may have been sent and not counted: tolerance is
        # the connection count.
        "lost": max(0, len(sent_sids) - args.connections - rows["tickets"]),
        "duplicated": rows["tickets"] - rows["distinct_idempotency"],
        # Server CPU per request: what the figures would be on idle cores, whatever else runs.
        "server_cpu_ms_per_request": round(cpu_used * 1000 / max(total, 1), 3),
        "cpu_bound_rps_on_2_idle_cores": round(2 * total / cpu_used) if cpu_used else None,
        "load_average_before": round(load_before, 2),
        "machine": f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}",
    }


def phase_kill(args: argparse.Namespace, workdir: Path) -> dict:
    env, url = prepare(args, workdir, "kill")
    port = int(env["PORT"])
    base = env["PUBLIC_BASE_URL"]
    server = Gunicorn(env, port, args.workers)
    accepted: dict[str, str] = {}  # MessageSid -> reference answered
    unanswered: list[dict[str, str]] = []
    lock = threading.Lock()
    stop = threading.Event()
    counter = iter(range(10_000_000))

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        while not stop.is_set():
            with lock:
                i = next(counter)
            if i >= args.kill_max:
                return
            params = mms_params(i, base, "b")
            sig, body = signed(params, base)
            try:
                conn.request("POST", PATH, body, {"Content-Type": "application/x-www-form-urlencoded",
                                                  "X-Twilio-Signature": sig})
                response = conn.getresponse()
                text = response.read().decode()
                ref = re.search(r"编号(\d{8})", text)
                with lock:
                    if response.status == 200 and ref:
                        accepted[params["MessageSid"]] = ref.group(1)
                    else:
                        unanswered.append(params)
            except (OSError, http.client.HTTPException):
                with lock:
                    unanswered.append(params)
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                if stop.is_set():
                    return
                time.sleep(0.05)

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(2.0)
    server.kill9()
    time.sleep(0.3)
    stop.set()
    for t in threads:
        t.join(30)
    stored_after_kill = stored_references(url)
    accepted_refs = set(accepted.values())
    lost = accepted_refs - stored_after_kill
    # Twilio redelivers what got no answer; a restarted server must take each exactly once.
    restarted = Gunicorn(env, port, args.workers)
    redelivered_ok = 0
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        for params in unanswered:
            sig, body = signed(params, base)
            conn.request("POST", PATH, body, {"Content-Type": "application/x-www-form-urlencoded",
                                              "X-Twilio-Signature": sig})
            response = conn.getresponse()
            if response.status == 200 and "编号" in response.read().decode():
                redelivered_ok += 1
    finally:
        restarted.stop()
    rows = count_rows(url)
    return {
        "bench": "sms_webhook", "phase": "kill_9_under_load", "accepted": len(accepted),
        "stored_at_kill": len(stored_after_kill), "accepted_but_lost": len(lost),
        "committed_but_unanswered": len(stored_after_kill - accepted_refs),
        "redelivered_after_restart": len(unanswered), "redeliveries_answered": redelivered_ok,
        "tickets_final": rows["tickets"], "expected_final": len(accepted) + len(unanswered),
        "duplicated": rows["tickets"] - rows["distinct_idempotency"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--worker-class", default="sync")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rate-hint", type=int, default=800, help="requests/s to prepare signed bodies for")
    parser.add_argument("--kill-max", type=int, default=20_000, help="upper bound of requests in the kill phase")
    parser.add_argument("--database-url", help="default: a fresh SQLite file (the embedded default)")
    parser.add_argument("--model-dir", type=Path, default=ROOT / "models")
    parser.add_argument("--skip-kill", action="store_true")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="bench-sms-"))
    try:
        print(json.dumps(phase_throughput(args, workdir), ensure_ascii=False), flush=True)
        if not args.skip_kill:
            print(json.dumps(phase_kill(args, workdir), ensure_ascii=False), flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
