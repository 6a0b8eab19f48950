"""Privacy maintenance commands: audit verify/checkpoint | keys rotate/rotate-audit/activate/reencrypt |
purge.

`register(subparsers)` adds them to `python -m assistant`; `python -m runtime.cli_privacy …`
runs them on their own. They use DATABASE_URL / DATA_DIR / key settings like the server, do
not migrate the database, and print one result line (JSON where it is counts) to stdout.
Exit codes: 0 done / ok, 1 found a problem (broken chain, values left), 2 bad configuration.
Key commands obey the production key policy (backend.infra.keys_policy) like the server does.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Engine

from assistant.config import Settings, load_settings
from backend.infra.crypto import KeyConfigError
from backend.infra.keys_policy import load_allowed_keys

Now = Callable[[], datetime]


def _now() -> datetime:
    return datetime.now(UTC)


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings()


def _engine(settings: Settings) -> Engine:
    from backend.infra import audit, db

    engine = db.make_engine(settings.database_url)
    # Commands that write audit entries (purge, reencrypt) link them with the audit key like
    # the server does; a legacy link after keyed ones would read as tampering.
    audit.bind_from_settings(engine, settings)
    return engine


def _audit_tools(settings: Settings):
    from backend.infra.audit import AuditSettings, CheckpointLog

    keyring = load_allowed_keys(settings.env, _key_file(settings))
    keys, active = keyring.audit_key_versions()
    audit = AuditSettings.from_config(settings.config)
    return keyring, CheckpointLog(audit.path(settings.data_dir), keys, active, audit.checkpoint_syslog)


def cmd_audit_verify(args: argparse.Namespace) -> int:
    from backend.infra import db
    from backend.infra.audit import verify

    settings = _settings(args)
    keyring, checkpoints = _audit_tools(settings)
    engine = _engine(settings)
    try:
        report = verify(db.session_factory(engine), keyring, checkpoints)
    finally:
        engine.dispose()
    print(report.line())
    return 0 if report.ok else 1


def cmd_audit_checkpoint(args: argparse.Namespace) -> int:
    """Verifies, then signs the head into the checkpoint file (for cron / a systemd timer):
    a broken chain is never vouched for."""
    from backend.infra import db
    from backend.infra.audit import verify, write_checkpoint

    settings = _settings(args)
    keyring, checkpoints = _audit_tools(settings)
    engine = _engine(settings)
    try:
        sessions = db.session_factory(engine)
        report = verify(sessions, keyring, checkpoints)
        if not report.ok:
            print(report.line())
            return 1
        last_id, _ = write_checkpoint(sessions, checkpoints)
    finally:
        engine.dispose()
    print(f"checkpoint of entry {last_id} written to {checkpoints.path}")
    return 0


def _key_file(settings: Settings) -> Path:
    return settings.data_dir / "keys.json"


def cmd_keys_rotate(args: argparse.Namespace) -> int:
    from backend.infra.rotation import add_key_to_file, rotated_env_lines

    settings = _settings(args)
    keyring = load_allowed_keys(settings.env, _key_file(settings))
    activate = not args.stage
    if keyring.is_development:
        version = add_key_to_file(_key_file(settings), activate=activate)
        state = "active" if activate else "staged (not active yet)"
        print(f"SM4 key version {version} added to {_key_file(settings)}, {state}")
        print("restart the server so it loads the new key; then run: python -m assistant keys reencrypt"
              if activate else
              f"restart every worker, then: python -m assistant keys activate {version}", file=sys.stderr)
        return 0
    version, lines = rotated_env_lines(keyring, activate=activate)
    print("\n".join(lines))
    print(f"keys come from the environment: set the lines above in your secret store (version {version}"
          f"{'' if activate else ', staged'}), restart the workers, then run keys reencrypt", file=sys.stderr)
    return 0


def cmd_keys_rotate_audit(args: argparse.Namespace) -> int:
    from backend.infra.rotation import add_audit_key_to_file, rotated_audit_env_lines

    settings = _settings(args)
    keyring = load_allowed_keys(settings.env, _key_file(settings))
    if keyring.is_development and not settings.env.get("AUDIT_KEYS"):
        version = add_audit_key_to_file(_key_file(settings))
        print(f"audit key version {version} added to {_key_file(settings)} and active")
        print("restart the server; older entries stay verifiable with their own version", file=sys.stderr)
        return 0
    version, lines = rotated_audit_env_lines(keyring)
    print("\n".join(lines))
    print(f"audit keys come from the environment: set the lines above (version {version}) in your secret "
          "store and restart; keep every older version in AUDIT_KEYS", file=sys.stderr)
    return 0


def cmd_keys_activate(args: argparse.Namespace) -> int:
    from backend.infra.rotation import activate_in_file, env_lines

    settings = _settings(args)
    keyring = load_allowed_keys(settings.env, _key_file(settings))
    if args.version not in keyring.sm4_keys:
        print(f"SM4 key version {args.version} is not loaded", file=sys.stderr)
        return 2
    if keyring.is_development:
        activate_in_file(_key_file(settings), args.version)
        print(f"SM4 key version {args.version} is active in {_key_file(settings)}")
    else:
        print(env_lines(keyring.sm4_keys, args.version)[1])
    return 0


def cmd_keys_reencrypt(args: argparse.Namespace, now: Now = _now) -> int:
    from backend.infra.crypto import FieldCipher
    from backend.infra.rotation import reencrypt

    settings = _settings(args)
    cipher = FieldCipher(load_allowed_keys(settings.env, _key_file(settings)))
    engine = _engine(settings)
    try:
        report = reencrypt(engine, cipher, now=now, batch_size=args.batch, max_batches=args.max_batches)
    finally:
        engine.dispose()
    print(json.dumps(report.summary(), ensure_ascii=False))
    return 0 if report.complete and report.remaining == 0 else 1


def cmd_purge(args: argparse.Namespace, now: Now = _now) -> int:
    from backend.infra import db
    from backend.infra.retention import RetentionPolicy, purge

    settings = _settings(args)
    policy = RetentionPolicy.from_config(settings.config)
    engine = _engine(settings)
    try:
        report = purge(db.session_factory(engine), settings.data_dir, policy, now(), dry_run=args.dry_run)
    finally:
        engine.dispose()
    print(json.dumps({**report.summary(), "audit_id": report.audit_id}, ensure_ascii=False))
    return 0


def _guarded(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except (KeyConfigError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2

    return run


def register(subparsers: argparse._SubParsersAction) -> None:
    """Adds `audit verify`, `keys rotate|activate|reencrypt` and `purge`."""
    audit = subparsers.add_parser("audit", help="audit log maintenance")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    audit_sub.add_parser("verify", help="check the keyed chain and the signed checkpoints: 'ok' or the first "
                         "broken entry").set_defaults(func=_guarded(cmd_audit_verify))
    audit_sub.add_parser("checkpoint", help="verify, then sign the current head into the checkpoint file "
                         "(run it from cron)").set_defaults(func=_guarded(cmd_audit_checkpoint))

    keys = subparsers.add_parser("keys", help="SM4 key rotation")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    rotate = keys_sub.add_parser("rotate", help="add a new SM4 key version and make it active")
    rotate.add_argument("--stage", action="store_true",
                        help="add it without activating (multi-worker deployments: activate after a restart)")
    rotate.set_defaults(func=_guarded(cmd_keys_rotate))
    keys_sub.add_parser("rotate-audit", help="add a new audit-chain key version and make it active").set_defaults(
        func=_guarded(cmd_keys_rotate_audit))
    activate = keys_sub.add_parser("activate", help="make a loaded key version the one new data is written with")
    activate.add_argument("version", type=int)
    activate.set_defaults(func=_guarded(cmd_keys_activate))
    reencrypt = keys_sub.add_parser("reencrypt", help="rewrite stored data under the active key (resumable)")
    reencrypt.add_argument("--batch", type=int, default=500, help="rows per transaction")
    reencrypt.add_argument("--max-batches", type=int, default=None, help="stop after this many batches")
    reencrypt.set_defaults(func=_guarded(cmd_keys_reencrypt))

    purge = subparsers.add_parser("purge", help="delete recordings, photos and transcripts past retention")
    purge.add_argument("--dry-run", action="store_true", help="count only, delete nothing")
    purge.set_defaults(func=_guarded(cmd_purge))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runtime.cli_privacy")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
