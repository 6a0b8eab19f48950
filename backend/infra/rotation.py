"""SM4 key rotation with the server running.

Tokens carry their key version ("2:<base64>"), so old and new rows are readable side by side
as long as both versions are loaded. A rotation is:

1. `keys rotate --stage`: add version N+1, still writing with N. Restart every worker: all can
   now read N+1. (`keys rotate` without --stage does 1 and 2 at once: fine for the single
   embedded process, which restarts once.)
2. `keys activate N+1`: restart workers one by one; any mix of old and new workers can read
   everything, because every worker already has N+1 loaded.
3. `keys reencrypt`: rewrites every `*_enc` value that is not under the active version, in
   short batches, each value compare-and-set so a row the server changes meanwhile is never
   overwritten with stale content. Rerunning picks up whatever is left (resumable, idempotent).
4. When it reports nothing remaining (and a session TTL has passed, as Redis sessions are
   encrypted too), the old version may be removed from SM4_KEYS.

The audit key (HMAC-SM3 links of the audit chain) rotates on its own: `keys rotate-audit` adds
version N+1 and makes it active; entries keep the version they were linked with, so every
version must stay loaded for `audit verify`.

The blind-index key (INDEX_KEY) is not rotated here: changing it means rehashing every
`*_hash` column from decrypted values, a separate job.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from sqlalchemy import Column, Engine, MetaData, Row, Table, and_, func, inspect, not_, or_, select, update
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from backend.infra.audit_chain import append_audit
from backend.infra.crypto import AUDIT_KEY_BYTES, SM4_KEY_BYTES, DecryptionError, FieldCipher, KeyConfigError, KeyRing

log = logging.getLogger(__name__)


# --- key material ------------------------------------------------------------------------------
def _write_atomically(path: Path, content: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".keys-", suffix=".tmp")  # mode 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(content)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _read_key_file(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        data["sm4_keys"] = {str(int(v)): k for v, k in data["sm4_keys"].items()}
        return data
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise KeyConfigError(f"key file {path} is unreadable: {exc}") from None


def add_key_to_file(path: Path, *, activate: bool) -> int:
    """A new SM4 key version in the key file (made active unless staging). Returns it."""
    data = _read_key_file(path)
    version = max(int(v) for v in data["sm4_keys"]) + 1
    data["sm4_keys"][str(version)] = os.urandom(SM4_KEY_BYTES).hex()
    if activate:
        data["active"] = version
    _write_atomically(path, json.dumps(data, indent=2))
    return version


def activate_in_file(path: Path, version: int) -> None:
    data = _read_key_file(path)
    if str(version) not in data["sm4_keys"]:
        raise KeyConfigError(f"SM4 key version {version} is not in {path}")
    data["active"] = version
    _write_atomically(path, json.dumps(data, indent=2))


def add_audit_key_to_file(path: Path) -> int:
    """A new audit key version in the key file, made active at once (nothing is re-encrypted:
    old entries keep their version, and every version stays to verify them). Returns it."""
    data = _read_key_file(path)
    keys = {str(int(v)): k for v, k in (data.get("audit_keys") or {}).items()}
    # Version 1 may be the one derived from INDEX_KEY (backend.infra.crypto) and not in the file: it
    # stays derivable, so new versions start at 2 either way.
    version = max([1, *map(int, keys)]) + 1
    keys[str(version)] = os.urandom(AUDIT_KEY_BYTES).hex()
    data["audit_keys"], data["audit_active"] = keys, version
    _write_atomically(path, json.dumps(data, indent=2))
    return version


def rotated_audit_env_lines(keyring: KeyRing) -> tuple[int, list[str]]:
    """For keys kept in the environment: the new audit key version and the lines to set. The
    derived version 1 is written out too, so the lines are complete on their own."""
    keys, _ = keyring.audit_key_versions()
    version = max(keys) + 1
    keys = {**keys, version: os.urandom(AUDIT_KEY_BYTES)}
    spec = ",".join(f"{v}:{k.hex()}" for v, k in sorted(keys.items()))
    return version, [f"AUDIT_KEYS={spec}", f"AUDIT_ACTIVE_KEY={version}"]


def env_lines(keys: Mapping[int, bytes], active: int) -> list[str]:
    spec = ",".join(f"{v}:{k.hex()}" for v, k in sorted(keys.items()))
    return [f"SM4_KEYS={spec}", f"SM4_ACTIVE_KEY={active}"]


def rotated_env_lines(keyring: KeyRing, *, activate: bool) -> tuple[int, list[str]]:
    """For keys kept in the environment: the new version and the lines to set."""
    version = max(keyring.sm4_keys) + 1
    keys = {**keyring.sm4_keys, version: os.urandom(SM4_KEY_BYTES)}
    return version, env_lines(keys, version if activate else keyring.active_version)


# --- re-encryption -----------------------------------------------------------------------------
@dataclass
class TableProgress:
    rows: int = 0  # rows rewritten
    values: int = 0  # *_enc values rewritten
    conflicts: int = 0  # changed by someone else between read and write: left for the next run
    failed: int = 0  # not decryptable (unknown version, corrupt): left as they are
    remaining: int = 0  # rows still holding a non-active value after this run


@dataclass
class ReencryptReport:
    active_version: int
    tables: dict[str, TableProgress] = field(default_factory=dict)
    complete: bool = True  # False when stopped by max_batches

    @property
    def remaining(self) -> int:
        return sum(t.remaining for t in self.tables.values())

    def summary(self) -> dict:
        return {
            "active_version": self.active_version,
            "complete": self.complete,
            "remaining": self.remaining,
            "tables": {name: vars(p) for name, p in self.tables.items()},
        }


def encrypted_columns(tables: Iterable[Table]) -> dict[str, tuple[Table, list[Column]]]:
    """Every `*_enc` column of tables with a single-column primary key."""
    found: dict[str, tuple[Table, list[Column]]] = {}
    for table in tables:
        columns = [c for c in table.columns if c.name.endswith("_enc")]
        if columns and len(table.primary_key.columns) == 1:
            found[table.name] = (table, columns)
    return found


def encrypted_tables(engine: Engine) -> dict[str, tuple[Table, list[Column]]]:
    """The `*_enc` columns as the database has them. Reflected rather than taken from the
    models, so tables from any module (and columns not yet migrated) are handled right."""
    inspector = inspect(engine)
    metadata = MetaData()
    tables = [
        Table(name, metadata, autoload_with=engine)
        for name in sorted(inspector.get_table_names())
        if any(c["name"].endswith("_enc") for c in inspector.get_columns(name))
    ]
    return encrypted_columns(tables)


def _stale(columns: list[Column], active: int) -> ColumnElement[bool]:
    prefix = f"{active}:"
    return or_(*(and_(c.is_not(None), not_(c.startswith(prefix, autoescape=True))) for c in columns))


def reencrypt(
    engine: Engine,
    cipher: FieldCipher,
    *,
    now: Callable[[], datetime],
    batch_size: int = 500,
    max_batches: int | None = None,
    on_batch: Callable[[str, int], None] | None = None,
    actor: str = "keys:reencrypt",
) -> ReencryptReport:
    """Rewrites stale `*_enc` values under the active key, one short transaction per batch.

    `max_batches` stops early (the next run carries on); `on_batch(table, last_id)` is called
    between batches (tests use it to interleave writes). Ends with one audit entry of counts.
    """
    if batch_size < 1:
        raise ValueError("batch size must be at least 1")
    active = cipher.keys.active_version
    report = ReencryptReport(active)
    tables = encrypted_tables(engine)
    batches = 0
    for name, (table, columns) in tables.items():
        progress = report.tables.setdefault(name, TableProgress())
        pk = next(iter(table.primary_key.columns))
        stale = _stale(columns, active)
        last_id = None
        while report.complete:
            if max_batches is not None and batches >= max_batches:
                report.complete = False
                break
            with Session(engine) as session, session.begin():
                query = select(pk, *columns).where(stale).order_by(pk).limit(batch_size)
                if last_id is not None:
                    query = query.where(pk > last_id)
                rows = session.execute(query).all()
                if not rows:
                    break
                for row in rows:
                    _reencrypt_row(session, table, pk, columns, row, cipher, progress)
                last_id = rows[-1][0]
            batches += 1
            if on_batch is not None:
                on_batch(name, last_id)
    with Session(engine) as session, session.begin():
        for name, progress in report.tables.items():
            table, columns = tables[name]
            progress.remaining = int(session.scalar(
                select(func.count()).select_from(table).where(_stale(columns, active))) or 0)
        append_audit(session, at=now(), actor=actor, action="update", entity_type="keyring",
                     entity_id=None, detail={"event": "reencrypt", **report.summary()})
    return report


def _reencrypt_row(session: Session, table: Table, pk: Column, columns: list[Column], row: Row,
                   cipher: FieldCipher, progress: TableProgress) -> None:
    row_id, values = row[0], row[1:]
    changes: dict[str, str] = {}
    unchanged: list[ColumnElement[bool]] = [pk == row_id]
    for column, token in zip(columns, values, strict=True):
        if token is None:
            continue
        try:
            new = cipher.reencrypt(token)
        except DecryptionError:
            progress.failed += 1
            log.warning("%s.%s of row %s cannot be decrypted; left as it is", table.name, column.name, row_id)
            continue
        if new != token:
            changes[column.name] = new
            unchanged.append(column == token)  # compare-and-set: only if nobody changed it
    if not changes:
        return
    result = session.execute(update(table).where(*unchanged).values(**changes))
    if result.rowcount == 1:
        progress.rows += 1
        progress.values += len(changes)
    else:
        progress.conflicts += 1
