"""Readings in: a gateway's batch is validated whole (a malformed reading refuses the batch with its
index), then stored and judged in one transaction — readings of unknown devices, other homes or
the wrong kind are kept aside, duplicates skipped, the engine run on the household's persisted
state, and its next due time armed as job `alert.check` (which runs the time rules at that time)."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, timedelta
from typing import Any

from sqlalchemy import select

from backend.alerts.engine import AlertEngine
from backend.alerts.notifications import Notifications
from backend.alerts.registration import token_hash
from backend.alerts.state import HouseholdState
from backend.alerts.store import CareDevice, CareHousehold, SensorReading, UnknownReading
from backend.alerts.unit import AlertUnit
from backend.alerts.values import AlertChange, Reading, ReadingError
from backend.infra import jobs
from backend.infra.crypto import FieldCipher
from backend.infra.tx import TransactionRunner

MAX_BATCH = 500


class BatchError(ValueError):
    """A malformed batch: `index` is the reading at fault (None: the batch itself)."""

    def __init__(self, index: int | None, field_name: str, message: str) -> None:
        super().__init__(message)
        self.index, self.field = index, field_name


class TokenError(PermissionError):
    pass


@dataclass(frozen=True)
class IngestResult:
    accepted: int
    duplicates: int
    kept_aside: int
    alerts: tuple[int, ...]


class Intake:
    def __init__(self, cipher: FieldCipher, engine: AlertEngine, runner: TransactionRunner,
                 notifications: Notifications) -> None:
        self.cipher = cipher
        self.engine = engine
        self.runner = runner
        self.notifications = notifications

    def ingest(self, token: str, items: Sequence[Any]) -> IngestResult:
        if not isinstance(items, list | tuple) or not items:
            raise BatchError(None, "readings", "must be a non-empty list")
        if len(items) > MAX_BATCH:
            raise BatchError(None, "readings", f"at most {MAX_BATCH} readings per request")
        readings = []
        for index, item in enumerate(items):
            try:
                readings.append(Reading.from_json(item, household_required=False, kinds=self.engine.rules.kinds))
            except ReadingError as exc:
                raise BatchError(index, exc.field, str(exc)) from None
        hashed = token_hash(self.cipher, token) if token else None

        def work(unit: AlertUnit) -> IngestResult:
            owner = unit.session.scalar(select(CareDevice).where(CareDevice.token_hash == hashed)) if hashed else None
            if owner is None:
                raise TokenError("unknown device token")
            return self._ingest_in(unit, owner, readings)

        return self.runner.run(work)

    def run_check(self, household_id: int) -> None:
        """Job alert.check: the time rules at now (the clock, not the readings)."""

        def work(unit: AlertUnit) -> None:
            household = unit.session.scalar(select(CareHousehold).where(CareHousehold.id == household_id)
                                            .with_for_update())
            if household is None:
                return
            state = self._state(household)
            changes = self.engine.tick(state, unit.now)
            household.next_check_at = None  # this job is done with; re-armed below if still due
            self._save_state(unit, household, state)
            self.notifications.apply(unit, household, changes)

        self.runner.run(work)

    def _ingest_in(self, unit: AlertUnit, owner: CareDevice, readings: list[Reading]) -> IngestResult:
        s = unit.session
        household = s.scalar(select(CareHousehold).where(CareHousehold.id == owner.household_id).with_for_update())
        assert household is not None
        devices = {d.device_uid: d for d in s.scalars(select(CareDevice).where(
            CareDevice.device_uid.in_({r.device for r in readings})))}
        mine: list[tuple[CareDevice, Reading]] = []
        aside = 0
        for r in readings:
            device = devices.get(r.device)
            reason = None
            if device is None:
                reason = "unknown_device"
            elif device.household_id != household.id or (r.household and r.household != household.code):
                reason = "other_household"
            elif device.kind != r.kind:
                reason = "kind_mismatch"
            if reason:
                aside += 1
                s.add(UnknownReading(token_device_id=owner.id, device_uid=r.device, household_code=r.household or None,
                                     kind=r.kind, value=r.value, ts=r.ts, reason=reason, received_at=unit.now))
                continue
            assert device is not None
            mine.append((device, r))
        fresh = self._store_fresh(unit, household, mine)
        raised: list[int] = []
        if fresh:
            state = self._state(household)
            changes: list[AlertChange] = []
            for _, r in fresh:
                changes.extend(self.engine.observe(state, Reading(household.code, r.device, r.kind, r.value, r.ts),
                                                   unit.now))
            self._save_state(unit, household, state)
            raised = self.notifications.apply(unit, household, changes)
        unit.audit(f"device:{owner.device_uid}", "create", household.id, entity_type="sensor_readings",
                   accepted=len(fresh), duplicates=len(mine) - len(fresh), kept_aside=aside)
        return IngestResult(len(fresh), len(mine) - len(fresh), aside, tuple(raised))

    def _store_fresh(self, unit: AlertUnit, household: CareHousehold,
                     mine: list[tuple[CareDevice, Reading]]) -> list[tuple[CareDevice, Reading]]:
        """Stores the readings not stored before (in time order) and returns them."""
        s = unit.session
        stored = set()
        if mine:
            ids = {d.id for d, _ in mine}
            stamps = {r.ts for _, r in mine}
            stored = {(d, ts.astimezone(UTC)) for d, ts in s.execute(select(SensorReading.device_id, SensorReading.ts)
                      .where(SensorReading.device_id.in_(ids), SensorReading.ts.in_(stamps)))}
        fresh: list[tuple[CareDevice, Reading]] = []
        for device, r in sorted(mine, key=lambda pair: pair[1].ts):
            key = (device.id, r.ts.astimezone(UTC))
            if key in stored:
                continue
            stored.add(key)
            fresh.append((device, r))
            s.add(SensorReading(household_id=household.id, device_id=device.id, kind=r.kind, value=r.value,
                                ts=r.ts, received_at=unit.now))
            if device.last_seen_at is None or r.ts > device.last_seen_at:
                device.last_seen_at = r.ts
        return fresh

    def _state(self, household: CareHousehold) -> HouseholdState:
        if household.engine_state:
            return HouseholdState.from_json(household.engine_state)
        return HouseholdState(household.code)

    def _save_state(self, unit: AlertUnit, household: CareHousehold, state: HouseholdState) -> None:
        household.engine_state = state.to_json()
        household.updated_at = unit.now
        due = self.engine.next_due(state)
        if due is not None and due <= unit.now:
            due = unit.now + timedelta(seconds=1)
        if due is not None and due != household.next_check_at:
            jobs.enqueue_in(unit.session, "alert.check", {"household_id": household.id}, due,
                            f"alert.check:{household.id}", unit.now)
        household.next_check_at = due
