"""Staff accounts for the console: users with roles, argon2 password hashes, lockout and login
rate limiting, and server-side console sessions.

Residents and family proxies never log in here: they are known by their verified phone on the
phone/SMS channels (backend.people.proxy enforces what a proxy may do). The console roles are below;
what each may read is decided in SQL by backend.people.staff_queries.

A console session is a random token in an HttpOnly cookie; only its SHA-256 is stored, so a
leaked table cannot be replayed as cookies. Sessions end after an idle time and a maximum age
(both from the injected clock, so tests can move time).
"""
from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import Boolean, ForeignKey, Integer, String, delete, func, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from assistant.ports import Clock
from backend.infra.crypto import FieldCipher
from backend.infra.models import Base, Timestamps
from backend.infra.tx import TransactionRunner, UnitOfWork

T = TypeVar("T")

ROLES: tuple[str, ...] = ("grid_worker", "social_worker", "department_handler", "agent", "admin")
ROLE_LABELS_ZH: dict[str, str] = {
    "grid_worker": "网格员", "social_worker": "社工", "department_handler": "部门经办人",
    "agent": "人工坐席", "admin": "管理员",
}
USERNAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{1,31}$")
GRID_RE = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
MIN_PASSWORD_LENGTH = 10


class StaffUser(Timestamps, Base):
    __tablename__ = "staff_users"

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(32), unique=True)
    password_hash: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(24))
    # Comma-separated grid ids: one for a grid worker, one or more for a social worker.
    grid_id: Mapped[str | None] = mapped_column(String(200))
    department: Mapped[str | None] = mapped_column(String(64))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    failed_logins: Mapped[int] = mapped_column(Integer, default=0)
    locked_until: Mapped[datetime | None]


class StaffSession(Base):
    __tablename__ = "staff_sessions"

    id: Mapped[int] = mapped_column(primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("staff_users.id", ondelete="CASCADE"), index=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime]
    last_seen_at: Mapped[datetime]
    expires_at: Mapped[datetime]  # the absolute end, whatever the activity


class StaffLoginFailure(Base):
    """One failed login, by keyed hash of the source address: spraying many usernames from one
    place is slowed down even though no single account reaches its lockout."""

    __tablename__ = "staff_login_failures"

    id: Mapped[int] = mapped_column(primary_key=True)
    source_hash: Mapped[str] = mapped_column(String(64), index=True)
    at: Mapped[datetime] = mapped_column(index=True)


@dataclass(frozen=True)
class Staff:
    """The acting member of staff, as every console query receives it."""

    id: int
    username: str
    role: str
    grids: tuple[str, ...]
    department: str | None

    @property
    def actor(self) -> str:
        return f"staff:{self.username}"[:64]

    @property
    def role_label(self) -> str:
        return ROLE_LABELS_ZH.get(self.role, self.role)


@dataclass(frozen=True)
class StaffPolicy:
    max_failed_logins: int = 5
    lockout_minutes: int = 15
    source_max_failures: int = 20
    source_window_minutes: int = 15
    session_idle_minutes: int = 30
    session_max_hours: int = 12
    social_workers_see_all: bool = False  # else only the grids named on their account

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> StaffPolicy:
        section = config.get("staff") or {}
        values = {name: type(getattr(cls, name))(section[name]) for name in cls.__dataclass_fields__
                  if name in section}
        return cls(**values)


@dataclass(frozen=True)
class LoginResult:
    outcome: str  # ok / invalid / locked / throttled
    staff: Staff | None = None
    session_token: str | None = None
    csrf_token: str | None = None
    username: str | None = None  # the account, when locked (the answer says how to unlock it)


@dataclass(frozen=True)
class ActiveSession:
    staff: Staff
    csrf_token: str


def _grids(value: str | None) -> tuple[str, ...]:
    return tuple(g for g in (value or "").split(",") if g)


def to_staff(user: StaffUser) -> Staff:
    return Staff(user.id, user.username, user.role, _grids(user.grid_id), user.department)


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("ascii", "replace")).hexdigest()


def _system_clock() -> datetime:
    return datetime.now(UTC)


class StaffDirectory:
    """Accounts, logins and console sessions on the store; one transaction per call."""

    def __init__(self, sessions: Callable[[], Session], cipher: FieldCipher, clock: Clock = _system_clock,
                 policy: StaffPolicy | None = None, hasher: PasswordHasher | None = None) -> None:
        self._sessions = sessions
        self._cipher = cipher
        self._clock = clock
        self.policy = policy or StaffPolicy()
        self._hasher = hasher or PasswordHasher()
        self._dummy: str | None = None
        self._tx = TransactionRunner(sessions, clock)

    @property
    def _dummy_hash(self) -> str:
        # Unknown usernames are checked against this, so timing does not tell which names exist.
        # Made on first use: building the console for every app (and test) should not hash.
        if self._dummy is None:
            self._dummy = self._hasher.hash(secrets.token_hex(16))
        return self._dummy

    def now(self) -> datetime:
        return self._clock().astimezone(UTC)

    def _run(self, work: Callable[[UnitOfWork], T]) -> T:
        return self._tx.run(work)

    # --- accounts --------------------------------------------------------------------------------
    def create_user(self, username: str, password: str, role: str, *, grid: str | None = None,
                    department: str | None = None, actor: str = "cli") -> Staff:
        username = username.strip().lower()
        if not USERNAME_RE.match(username):
            raise ValueError("username: 2–32 of a-z 0-9 _ . -, starting with a letter or digit")
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}")
        grids = tuple(sorted({g.strip() for g in (grid or "").split(",") if g.strip()}))
        if any(not GRID_RE.match(g) for g in grids):
            raise ValueError("grid ids: letters, digits, _ and -")
        if role == "grid_worker" and len(grids) != 1:
            raise ValueError("a grid worker needs exactly one --grid")
        if role == "social_worker" and not grids and not self.policy.social_workers_see_all:
            raise ValueError("a social worker needs --grid (one or more, comma-separated)")
        if role == "department_handler" and not (department or "").strip():
            raise ValueError("a department handler needs --department")
        _check_password(password)
        password_hash = self._hasher.hash(password)

        def work(unit: UnitOfWork) -> Staff:
            session = unit.session
            if session.scalar(select(StaffUser.id).where(StaffUser.username == username)) is not None:
                raise ValueError(f"user {username} exists")
            now = unit.now
            user = StaffUser(username=username, password_hash=password_hash, role=role,
                             grid_id=",".join(grids) or None,
                             department=(department or "").strip()[:64] or None,
                             active=True, failed_logins=0, created_at=now, updated_at=now)
            session.add(user)
            session.flush()
            unit.audits.append(dict(actor=actor[:64], action="create", entity_type="staff_user",
                                    entity_id=user.id, detail={"username": username, "role": role,
                                                               "grids": list(grids), "department": user.department}))
            return to_staff(user)

        return self._run(work)

    @staticmethod
    def _locked_user(session: Session, username: str) -> StaffUser:
        """The account row, locked for this transaction; LookupError when there is none."""
        user = session.scalar(select(StaffUser).where(StaffUser.username == username).with_for_update())
        if user is None:
            raise LookupError(username)
        return user

    def set_active(self, username: str, active: bool, *, actor: str) -> None:
        def work(unit: UnitOfWork) -> None:
            session = unit.session
            user = self._locked_user(session, username)
            now = unit.now
            user.active, user.updated_at = active, now
            if not active:
                session.execute(delete(StaffSession).where(StaffSession.user_id == user.id))
            unit.audits.append(dict(actor=actor[:64], action="update", entity_type="staff_user",
                                    entity_id=user.id, detail={"active": active}))

        self._run(work)

    def change_password(self, staff: Staff, old: str, new: str) -> bool:
        """False when `old` is wrong. Ends the user's other sessions: a changed password is
        often a suspected leak."""
        _check_password(new)

        def work(unit: UnitOfWork) -> bool:
            session = unit.session
            user = session.get(StaffUser, staff.id, with_for_update=True)
            if user is None or not self._verify(user.password_hash, old):
                return False
            now = unit.now
            user.password_hash, user.updated_at = self._hasher.hash(new), now
            session.execute(delete(StaffSession).where(StaffSession.user_id == user.id))
            unit.audits.append(dict(actor=staff.actor, action="update", entity_type="staff_user",
                                    entity_id=user.id, detail={"password": "changed"}))
            return True

        return self._run(work)

    def _verify(self, password_hash: str, password: str) -> bool:
        try:
            return self._hasher.verify(password_hash, password)
        except (VerificationError, InvalidHashError):
            return False

    # --- login -----------------------------------------------------------------------------------
    def authenticate(self, username: str, password: str, source: str) -> LoginResult:
        """Checks a login and opens a session on success.

        Two limits, chosen so that failures on other (or made-up) accounts can never keep a
        member of staff with the right password out:
        - per account: `max_failed_logins` wrong passwords in a row lock that account for
          `lockout_minutes` (only failures on the account itself count; `staff unlock` ends it);
        - per source address: after `source_max_failures` failures within the window, further
          *failed* attempts from there are answered "throttled" and no longer audited one by one
          (a flood must not grow the chain). The password is still checked, so a correct
          password for an account that is not itself locked logs in from a throttled source.
        Guessing stays bounded by the per-account lockout whatever the number of sources."""
        username = (username or "").strip().lower()[:64]
        source_hash = self._cipher.blind_index(source or "unknown", "staff_login_source")
        policy = self.policy

        def work(unit: UnitOfWork) -> LoginResult:
            session = unit.session
            now = unit.now
            window = now - timedelta(minutes=policy.source_window_minutes)
            session.execute(delete(StaffLoginFailure).where(StaffLoginFailure.at < window))
            session.execute(delete(StaffSession).where(StaffSession.expires_at <= now))  # housekeeping
            recent = session.scalar(select(func.count()).select_from(StaffLoginFailure)
                                    .where(StaffLoginFailure.source_hash == source_hash)) or 0
            flooding = recent >= policy.source_max_failures
            user = session.scalar(select(StaffUser).where(StaffUser.username == username).with_for_update())
            if user is not None and user.locked_until is not None and user.locked_until > now:
                if not flooding:
                    unit.audits.append(dict(actor="console", action="login", entity_type="staff_user",
                                            entity_id=user.id, detail={"outcome": "locked"}))
                return LoginResult("locked", username=user.username)
            valid = self._verify(user.password_hash if user else self._dummy_hash, password or "")
            if user is None or not valid or not user.active:
                if not flooding:  # past the limit the source stays throttled until its rows age out
                    session.add(StaffLoginFailure(source_hash=source_hash, at=now))
                outcome = "throttled" if flooding else "invalid"
                if user is not None:
                    user.failed_logins += 1
                    if user.failed_logins >= policy.max_failed_logins:
                        user.locked_until = now + timedelta(minutes=policy.lockout_minutes)
                        user.failed_logins = 0
                        outcome = "locked"
                if outcome != "throttled":  # a lockout is a state change: always audited
                    unit.audits.append(dict(actor="console", action="login", entity_type="staff_user",
                                            entity_id=user.id if user else None, detail={"outcome": f"failed:{outcome}"}))
                return LoginResult(outcome, username=user.username if outcome == "locked" and user else None)
            user.failed_logins, user.locked_until = 0, None
            if self._hasher.check_needs_rehash(user.password_hash):
                user.password_hash = self._hasher.hash(password)
            token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
            session.add(StaffSession(token_hash=_token_hash(token), user_id=user.id, csrf_token=csrf,
                                     created_at=now, last_seen_at=now,
                                     expires_at=now + timedelta(hours=policy.session_max_hours)))
            staff = to_staff(user)
            unit.audits.append(dict(actor=staff.actor, action="login", entity_type="staff_user",
                                    entity_id=user.id, detail={"outcome": "ok", **({"source": "throttled"} if flooding else {})}))
            return LoginResult("ok", staff, token, csrf, username=user.username)

        return self._run(work)

    def unlock(self, username: str, *, actor: str) -> None:
        """Ends a lockout (and the count towards the next one) before its time: `staff unlock`."""
        username = (username or "").strip().lower()

        def work(unit: UnitOfWork) -> None:
            session = unit.session
            user = self._locked_user(session, username)
            now = unit.now
            was_locked = user.locked_until is not None and user.locked_until > now
            user.failed_logins, user.locked_until, user.updated_at = 0, None, now
            unit.audits.append(dict(actor=actor[:64], action="update", entity_type="staff_user",
                                    entity_id=user.id, detail={"unlocked": True, "was_locked": was_locked}))

        self._run(work)

    def session(self, token: str | None) -> ActiveSession | None:
        """The live session of a cookie token (refreshing its idle timer), or None."""
        if not token or len(token) > 128:
            return None
        idle = timedelta(minutes=self.policy.session_idle_minutes)

        def work(unit: UnitOfWork) -> ActiveSession | None:
            session = unit.session
            now = unit.now
            row = session.scalar(select(StaffSession).where(StaffSession.token_hash == _token_hash(token)))
            if row is None:
                return None
            user = session.get(StaffUser, row.user_id)
            if user is None or not user.active or row.expires_at <= now or row.last_seen_at + idle <= now:
                session.delete(row)
                return None
            if now - row.last_seen_at > timedelta(seconds=30):  # not a write on every click
                row.last_seen_at = now
            return ActiveSession(to_staff(user), row.csrf_token)

        return self._run(work)

    def logout(self, token: str | None) -> None:
        if not token:
            return

        def work(unit: UnitOfWork) -> None:
            session = unit.session
            row = session.scalar(select(StaffSession).where(StaffSession.token_hash == _token_hash(token)))
            if row is None:
                return
            user = session.get(StaffUser, row.user_id)
            session.delete(row)
            session.flush()
            unit.audits.append(dict(actor=f"staff:{user.username if user else '?'}"[:64],
                                    action="logout", entity_type="staff_user", entity_id=row.user_id, detail={}))

        self._run(work)


def _check_password(password: str) -> None:
    if len(password or "") < MIN_PASSWORD_LENGTH:
        raise ValueError(f"password: at least {MIN_PASSWORD_LENGTH} characters")
