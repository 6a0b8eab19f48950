"""The households file: each household's grid, the senior, family contacts and the staff who
look after them (grid worker, social worker, doctor …), plus per-grid staff for escalation.

```yaml
grids:
  G01: {backup_grid_worker: {name: 李明, phone: "13800000002"}, community_leader: {…}, property: {…}}
households:
  - id: H001
    grid: G01
    address: 阳光小区3栋2单元501
    senior: {name: 张秀兰, phone: "13700002222", gender: F}
    family: [{name: 李强, relation: 儿子, phone: "13900001111"}]
    grid_worker: {name: 王芳, phone: "13800000001"}
    social_worker: {…}
    doctor: {…}
    devices: [{id: W-H001, kind: water, token: …}]     # optional (the DB registers devices)
```
A role given on the household wins over the same role on its grid.
"""
from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from backend.alerts.policy import ROLES
from backend.alerts.values import KINDS


class HouseholdsFileError(ValueError):
    pass


@dataclass(frozen=True)
class Contact:
    role: str
    name: str
    phone: str | None = None
    relation: str | None = None


@dataclass(frozen=True)
class DeviceSpec:
    device: str
    kind: str
    token: str | None = None  # a gateway token may report for every device of the household


@dataclass(frozen=True)
class Household:
    id: str
    grid: str
    address: str
    senior: Contact
    gender: str | None  # "F" / "M": 阿姨 / 叔叔 on the check-in call
    contacts: tuple[Contact, ...]  # every role but the senior, in file order
    devices: tuple[DeviceSpec, ...] = ()

    def contacts_for(self, role: str) -> tuple[Contact, ...]:
        if role == "senior":
            return (self.senior,)
        return tuple(c for c in self.contacts if c.role == role)

    @property
    def title(self) -> str:
        return {"F": "阿姨", "M": "叔叔"}.get(self.gender or "", "老人家")


def _contact(role: str, spec: Any, where: str) -> Contact:
    if not isinstance(spec, Mapping) or not spec.get("name"):
        raise HouseholdsFileError(f"{where}: {role} needs at least a name")
    phone = spec.get("phone")
    return Contact(role, str(spec["name"]), str(phone) if phone else None,
                   str(spec["relation"]) if spec.get("relation") else None)


def _role_contacts(spec: Mapping[str, Any], where: str) -> list[Contact]:
    out: list[Contact] = []
    for role in ROLES:
        if role == "senior" or role not in spec:
            continue
        value = spec[role]
        items = value if isinstance(value, list) else [value]
        out.extend(_contact(role, item, f"{where}.{role}") for item in items)
    return out


def parse_households(data: Mapping[str, Any], kinds: Collection[str] = KINDS) -> dict[str, Household]:
    """`kinds`: the sensor kinds a device may have (`AlertRules.kinds` when config adds some)."""
    grids = {str(g): _role_contacts(spec or {}, f"grids.{g}") for g, spec in (data.get("grids") or {}).items()}
    out: dict[str, Household] = {}
    for i, spec in enumerate(data.get("households") or []):
        where = f"households[{i}]"
        if not isinstance(spec, Mapping) or not spec.get("id") or not spec.get("grid"):
            raise HouseholdsFileError(f"{where}: id and grid are required")
        hid, grid = str(spec["id"]), str(spec["grid"])
        if hid in out:
            raise HouseholdsFileError(f"{where}: duplicate household id {hid}")
        senior_spec = spec.get("senior")
        senior = _contact("senior", senior_spec, where)
        own = _role_contacts(spec, where)
        own_roles = {c.role for c in own}
        inherited = [c for c in grids.get(grid, []) if c.role not in own_roles]
        devices = []
        for d in spec.get("devices") or []:
            if d.get("kind") not in kinds:
                raise HouseholdsFileError(f"{where}: device {d.get('id')} has unknown kind {d.get('kind')}")
            devices.append(DeviceSpec(str(d["id"]), str(d["kind"]), d.get("token")))
        out[hid] = Household(hid, grid, str(spec.get("address") or ""), senior,
                             str(senior_spec.get("gender")) if senior_spec.get("gender") else None,
                             tuple(own + inherited), tuple(devices))
    return out


def load_households(path: Path | str, kinds: Collection[str] = KINDS) -> dict[str, Household]:
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise HouseholdsFileError(f"{path}: not valid YAML: {exc}") from None
    return parse_households(data, kinds)
