"""A small community for the staff console tests: two grids (G01, G02), staff of every role, a
resident, a ticket, a care alert and a proxy grant in each grid, and one waiting handoff."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, timedelta

from argon2 import PasswordHasher

from assistant.ports import HandoffRequest
from backend.affairs.references import new_reference
from backend.alerts.store import Alert, CareHousehold
from backend.infra.models import Resident, Ticket
from backend.people.staff import StaffDirectory
from core_fixtures import make_id

PASSWORD = "correct-horse-42"
# Fast hashing for tests; production uses argon2-cffi's defaults (RFC 9106 low-memory profile).
FAST_HASHER = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1)
USERS = {
    "admin": ("admin", None, None),
    "grida": ("grid_worker", "G01", None),
    "gridb": ("grid_worker", "G02", None),
    "socia": ("social_worker", "G01", None),
    "water": ("department_handler", None, "水务"),
    "agent": ("agent", None, None),
}
PEOPLE = {"G01": ("张秀兰", "13700001111", "19450302"), "G02": ("李建国", "13700002222", "19400815")}


@dataclass
class World:
    runtime: object
    residents: dict[str, int] = field(default_factory=dict)  # grid → resident id
    tickets: dict[str, str] = field(default_factory=dict)  # grid → reference
    alerts: dict[str, int] = field(default_factory=dict)  # grid → alert id
    grants: dict[str, int] = field(default_factory=dict)  # grid → grant id
    handoff: str = ""

    @property
    def directory(self) -> StaffDirectory:
        return self.runtime.staff.directory


def build_world(runtime) -> World:
    services = runtime.staff
    services.directory._hasher = FAST_HASHER
    for username, (role, grid, department) in USERS.items():
        services.directory.create_user(username, PASSWORD, role, grid=grid, department=department)
    world = World(runtime)
    cipher, now = runtime.cipher, runtime.clock()
    with runtime.db_sessions() as session, session.begin():
        for grid, (name, phone, birth) in PEOPLE.items():
            id_number = make_id(birth)
            resident = Resident(name_enc=cipher.encrypt(name), phone_enc=cipher.encrypt(phone),
                                phone_hash=cipher.blind_index(phone, "phone"), id_enc=cipher.encrypt(id_number),
                                id_hash=cipher.blind_index(id_number, "id_number"), grid_id=grid,
                                address_enc=cipher.encrypt(f"{grid}小区1号楼101室"), created_at=now, updated_at=now,
                                birth_date=date(int(birth[:4]), int(birth[4:6]), int(birth[6:])))
            session.add(resident)
            reference = new_reference("ticket")
            session.add(Ticket(reference=reference, status="routed", channel="sms", sender_hash="x" * 64,
                               idempotency_key=f"t-{grid}", category="report_issue", grid_id=grid,
                               department="水务" if grid == "G02" else "物业",
                               description_enc=cipher.encrypt(f"{grid} 楼道漏水"), contact_enc=cipher.encrypt(phone),
                               created_at=now, updated_at=now))
            household = CareHousehold(code=f"H-{grid}", grid_id=grid, senior_name_enc=cipher.encrypt(name),
                                      created_at=now, updated_at=now)
            session.add(household)
            session.flush()
            alert = Alert(household_id=household.id, rule="no_water", alert_key="no_water", level="urgent",
                          state="notified", dedupe_key=f"a-{grid}", detail="{}", raised_at=now, notify_at=now,
                          notified_at=now, notified_roles='["grid_worker"]', escalation_step=0,
                          ack_due_at=now + timedelta(minutes=30), created_at=now, updated_at=now)
            session.add(alert)
            session.flush()
            world.residents[grid], world.tickets[grid], world.alerts[grid] = resident.id, reference, alert.id
    for grid, (_, phone, _) in PEOPLE.items():
        grant = runtime.proxies.request(senior_phone=phone, proxy_phone=f"1390000{grid[-2:]}00",
                                        relation="daughter")
        world.grants[grid] = runtime.proxies.consent(grant.id, channel="staff", staff_id="admin").id
    world.handoff = runtime.backend.create_handoff(HandoffRequest(
        sender_id="caller-1", channel="twilio_voice", phone=PEOPLE["G01"][1], reason="user_request", urgent=True,
        transcript=(("user", "我想办老年证"), ("bot", "请告诉我身份证号码"), ("user", "转人工")),
        form_name="apply_senior_card", form_slots={"name": "张秀兰"}, idempotency_key="h-1")).reference
    return world


def login(client, username: str, password: str = PASSWORD):
    """Logs a Flask test client in through the form (with its login CSRF token)."""
    page = client.get("/console/login").get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    return client.post("/console/login", data={"username": username, "password": password, "csrf_token": token})


def csrf_of(client, path: str = "/console/") -> str:
    page = client.get(path, follow_redirects=True).get_data(as_text=True)
    return re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
