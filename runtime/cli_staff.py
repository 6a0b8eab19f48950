"""`python -m assistant staff add USERNAME --role R [--grid G] [--department D]`,
`python -m assistant staff unlock USERNAME` (ends a login lockout), and the composition of the
staff directory and queries for the console.

The password is read from stdin when it is not a terminal (first line; for scripts), else asked
twice without echo. Exit codes: 0 done, 2 refused (bad role, weak password, user exists, no such user).
Also runnable as `python -m runtime.cli_staff add …` until runtime/cli.py lists it.
"""
from __future__ import annotations

import argparse
import getpass
import json
import sys

from assistant.config import load_settings
from backend.people.staff import ROLES, StaffDirectory, StaffPolicy


def _read_password() -> str:
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("密码（至少10位）: ")
    if getpass.getpass("再输一次: ") != first:
        raise ValueError("the two passwords differ")
    return first


def cmd_add(args: argparse.Namespace) -> int:
    from runtime.container import make_cipher, make_clock, open_database

    settings = load_settings()
    try:
        password = _read_password()
        directory = StaffDirectory(open_database(settings), make_cipher(settings), make_clock(settings),
                                   StaffPolicy.from_config(settings.config))
        staff = directory.create_user(args.username, password, args.role, grid=args.grid,
                                      department=args.department, actor="cli:staff-add")
    except ValueError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    print(json.dumps({"username": staff.username, "role": staff.role, "grids": list(staff.grids),
                      "department": staff.department}, ensure_ascii=False))
    return 0


def cmd_unlock(args: argparse.Namespace) -> int:
    """Ends a login lockout now (after too many wrong passwords on that account)."""
    from runtime.container import make_cipher, make_clock, open_database

    settings = load_settings()
    directory = StaffDirectory(open_database(settings), make_cipher(settings), make_clock(settings),
                               StaffPolicy.from_config(settings.config))
    try:
        directory.unlock(args.username, actor="cli:staff-unlock")
    except LookupError:
        print(f"没有这个用户：{args.username}", file=sys.stderr)
        return 2
    print(f"{args.username.strip().lower()} 已解锁，可以重新登录。")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    staff = subparsers.add_parser("staff", help="staff console accounts")
    sub = staff.add_subparsers(dest="staff_command", required=True)
    add = sub.add_parser("add", help="create a staff user (password from stdin or prompted)")
    add.add_argument("username")
    add.add_argument("--role", required=True, choices=ROLES)
    add.add_argument("--grid", help="grid id (grid worker: one; social worker: one or more, comma-separated)")
    add.add_argument("--department", help="department of a department handler")
    add.set_defaults(func=cmd_add)
    unlock = sub.add_parser("unlock", help="end a login lockout (too many wrong passwords) now")
    unlock.add_argument("username")
    unlock.set_defaults(func=cmd_unlock)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runtime.cli_staff")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["staff", *(sys.argv[1:] if argv is None else argv)])
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
