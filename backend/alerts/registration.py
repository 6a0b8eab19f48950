"""Registering households from the households file: the household row (address and senior's name
encrypted), one contact row per person and role (phones encrypted, with a blind index to match
replies), and devices with the keyed hash of their token. Idempotent: a re-import updates."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import select

from backend.alerts.households import Household
from backend.alerts.store import CareContact, CareDevice, CareHousehold
from backend.alerts.unit import AlertUnit
from backend.infra.crypto import FieldCipher
from backend.infra.tx import TransactionRunner


def token_hash(cipher: FieldCipher, token: str) -> str:
    return cipher.blind_index(token, "device_token")


def new_device_token() -> str:
    """A device token to print once for the installer; only its keyed hash is stored."""
    import secrets

    return secrets.token_urlsafe(24)


class Registration:
    def __init__(self, cipher: FieldCipher, runner: TransactionRunner) -> None:
        self.cipher = cipher
        self.runner = runner

    def register_households(self, households: Mapping[str, Household], actor: str = "system:import") -> int:
        def work(unit: AlertUnit) -> int:
            for household in households.values():
                self._upsert_household(unit, household, actor)
            return len(households)

        return self.runner.run(work)

    def register_device(self, household_code: str, device_uid: str, kind: str, token: str | None = None,
                        actor: str = "system:import") -> None:
        def work(unit: AlertUnit) -> None:
            row = unit.session.scalar(select(CareHousehold).where(CareHousehold.code == household_code))
            if row is None:
                raise KeyError(household_code)
            device = self._upsert_device(unit, row, device_uid, kind, token)
            unit.audit(actor, "update", device.id, entity_type="care_device", household=household_code, kind=kind)

        self.runner.run(work)

    def _upsert_household(self, unit: AlertUnit, household: Household, actor: str) -> CareHousehold:
        s, c = unit.session, self.cipher
        row = s.scalar(select(CareHousehold).where(CareHousehold.code == household.id))
        created = row is None
        if row is None:
            row = CareHousehold(code=household.id, created_at=unit.now)
            s.add(row)
        row.grid_id, row.senior_gender = household.grid, household.gender
        row.address_enc = c.encrypt(household.address or None)
        row.senior_name_enc = c.encrypt(household.senior.name)
        row.updated_at = unit.now
        s.flush()
        existing = {(p.role, p.position): p for p in s.scalars(select(CareContact).where(
            CareContact.household_id == row.id))}
        wanted: dict[tuple[str, int], Any] = {}
        positions: dict[str, int] = {}
        for contact in (household.senior, *household.contacts):
            position = positions.get(contact.role, 0)
            positions[contact.role] = position + 1
            wanted[(contact.role, position)] = contact
        for key, contact in wanted.items():
            person = existing.pop(key, None) or CareContact(household_id=row.id, role=key[0], position=key[1])
            person.name_enc = c.encrypt(contact.name)
            person.phone_enc = c.encrypt(contact.phone) if contact.phone else None
            person.phone_hash = c.blind_index(contact.phone, "phone") if contact.phone else None
            person.relation = contact.relation
            s.add(person)
        for stale in existing.values():
            s.delete(stale)
        for device in household.devices:
            self._upsert_device(unit, row, device.device, device.kind, device.token)
        s.flush()
        unit.audit(actor, "create" if created else "update", row.id, entity_type="care_household",
                   contacts=len(wanted), devices=len(household.devices))
        return row

    def _upsert_device(self, unit: AlertUnit, household: CareHousehold, uid: str, kind: str,
                       token: str | None) -> CareDevice:
        device = unit.session.scalar(select(CareDevice).where(CareDevice.device_uid == uid))
        if device is None:
            device = CareDevice(device_uid=uid, created_at=unit.now)
            unit.session.add(device)
        device.household_id, device.kind = household.id, kind
        if token:
            device.token_hash = token_hash(self.cipher, token)
        unit.session.flush()
        return device
