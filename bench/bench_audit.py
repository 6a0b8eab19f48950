"""Ceiling of audited writes: every write of personal data appends to ONE hash chain, serialised
on its head row, so the whole deployment's audited-write rate is bounded by how fast that critical
section (lock head → insert entry → move head → commit) turns over.

    python bench/bench_audit.py [--database postgres|sqlite] [--threads 1 4 8] [--seconds 8]

Starts a private PostgreSQL (deploy/local_cluster.py; fsync off, so the figure is an upper bound:
on a real disk each commit also waits for its WAL flush while holding the head) or uses a SQLite
file, then runs N threads each committing transactions of one small row + one audit entry.
Prints one JSON line per thread count.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import func, select  # noqa: E402

from backend.infra import db  # noqa: E402
from backend.infra.audit_chain import AuditEntry, append_audit, verify_audit_chain  # noqa: E402


def run(url: str, threads: int, seconds: float) -> dict:
    engine = db.make_engine(url, pool_size=threads + 2) if url.startswith("postgres") else db.make_engine(url)
    sessions = db.session_factory(engine)
    with sessions() as s:
        before = int(s.scalar(select(func.count()).select_from(AuditEntry)) or 0)
    stop = time.monotonic() + seconds
    latencies: list[float] = []
    lock = threading.Lock()

    def writer(n: int) -> None:
        mine = []
        while time.monotonic() < stop:
            started = time.perf_counter()
            with sessions() as session, session.begin():
                append_audit(session, at=datetime.now(UTC), actor=f"bench:{n}", action="create",
                             entity_type="bench", entity_id=n, detail={"k": "v"})
            mine.append(time.perf_counter() - started)
        with lock:
            latencies.extend(mine)

    workers = [threading.Thread(target=writer, args=(i,)) for i in range(threads)]
    t0 = time.monotonic()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.monotonic() - t0
    with sessions() as s:
        after = int(s.scalar(select(func.count()).select_from(AuditEntry)) or 0)
        broken = verify_audit_chain(s)
    engine.dispose()
    latencies.sort()
    pick = lambda q: round(latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000, 2)  # noqa: E731
    return {"bench": "audit_chain", "database": url.split(":")[0], "threads": threads,
            "commits": after - before, "commits_per_s": round((after - before) / elapsed, 1),
            "p50_ms": pick(0.5), "p99_ms": pick(0.99), "chain_intact": broken is None,
            "machine": f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}"}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--database", choices=["postgres", "sqlite"], default="postgres")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.database == "sqlite":
            url = f"sqlite:///{tmp}/audit.db"
            db.upgrade(url)
            for n in args.threads:
                print(json.dumps(run(url, n, args.seconds)), flush=True)
            return 0
        from deploy.local_cluster import LocalCluster

        with LocalCluster(Path(tmp), web_workers=1, job_workers=0, database="postgres", redis=False,
                          fake_twilio=False) as cluster:
            for n in args.threads:
                print(json.dumps(run(cluster.database_url, n, args.seconds)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
