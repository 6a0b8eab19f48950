"""Staff console: server-rendered pages under /console for agents, grid and social workers,
department handlers and admins (backend.people.staff roles; what each sees is filtered in SQL by
backend.people.staff_queries, so the navigation is a convenience, not the protection).

Login sets an HttpOnly, SameSite=Strict cookie holding a random session token (only its hash
is stored). Every POST form carries the session's CSRF token; the login form a double-submit
token. Pages are never cached and cannot be framed.

    /console/login /console/logout
    /console/handoffs [/<ref> (audited read) /<ref>/take /<ref>/close]
    /console/tickets  [/<ref> (audited read) /<ref>/act]
    /console/alerts   [/<id>/<acknowledge|visited|close>]
    /console/residents [/<id> /<id>/reveal (POST, audited)]
    /console/grants   [/<id>/revoke]

Not to be confused with the department ticket page (channels/department_page.py, /staff/console),
one page over the token API. Templates: templates/staff_console/; the blueprint keeps the name
"console" (endpoints in templates, metrics labels).
"""
from __future__ import annotations

import secrets
from collections.abc import Callable
from datetime import date, datetime, time, timedelta
from typing import Any

from flask import Blueprint, Response, abort, g, make_response, redirect, render_template, request, url_for
from werkzeug.exceptions import HTTPException

from backend.infra.models import STATUS_LABELS_ZH
from backend.outreach.callbacks import CALLBACK_LABELS
from backend.people.exports import KINDS, ExportFilter
from backend.people.proxy import RELATION_LABELS_ZH, SCOPE_LABELS_ZH
from backend.people.staff_queries import (
    SECTIONS,
    SILENCE_ZH,
    form_slots_text,
    handed_over_in_silence,
    transcript_lines,
)
from backend.tickets import OPEN_STATUSES, TransitionError
from channels.boundary import safe_equal
from channels.charts import MapPin, hourly_bars, meter, work_order_map
from channels.open311 import media_links
from channels.routes import register
from channels.runtime_port import ChannelRuntime

NAME = "console"
COOKIE = "console_session"
LOGIN_COOKIE = "console_login_csrf"
SECTION_LABELS = {"handoffs": "人工接听", "tickets": "报事工单", "alerts": "关爱告警", "residents": "居民",
                  "grants": "代办授权", "dashboard": "数据看板", "map": "工单地图", "outreach": "平安电话和通知"}  # home opens the first one a role has
TICKET_ACTIONS = {"accept": "受理", "start": "开始处理", "resolve": "办结", "reject": "退回",
                  "reopen": "重新处理", "close": "结束"}
ALERT_ACTIONS = {"acknowledge": "收到", "visited": "已上门", "close": "关闭告警"}
ALERT_STATES_ZH = {"open": "新告警", "notified": "已通知", "escalated": "已升级", "acknowledged": "已收到",
                   "visited": "已上门", "closed": "已关闭"}
LEVELS_ZH = {"info": "提示", "warning": "注意", "urgent": "紧急", "critical": "危急"}
RULES_ZH = {"no_water": "长时间未用水", "electricity_drop": "用电骤降", "no_door": "长时间未开门",
            "gas_leak": "燃气泄漏", "heart_rate": "心率异常", "sensor_offline": "设备离线",
            "checkin_missed": "平安电话未接", "checkin_help": "平安电话求助"}
CHECKIN_STATES_ZH = {"ok": "平安", "help": "要帮助", "missed": "未接通", "skipped": "免打（有用水等活动）",
                     "planned": "待拨打", "calling": "拨打中", "retrying": "待重拨", "waiting_sms": "等短信回复"}
DELIVERY_STATES_ZH = {"delivered": "已送达", "listened": "已听完", "failed": "失败", "opted_out": "已退订",
                      "pending": "待发送", "sending": "发送中"}
NOTICE_CHANNELS_ZH = {"sms": "短信", "voice": "语音电话", "preference": "按居民习惯"}
CHANNELS_ZH = {"twilio_voice": "电话", "phone": "电话", "voice": "电话", "sms": "短信", "twilio_sms": "短信",
               "rest": "网页", "kiosk": "自助机", "terminal": "终端", "open311": "网上报事"}
REASONS_ZH = {"user_request": "居民要求", "emergency": "紧急情况", "misunderstood": "多次没听懂",
              "no_input": SILENCE_ZH}
GRANT_STATUS_ZH = {"pending_consent": "等老人同意", "active": "有效", "revoked": "已取消", "expired": "已过期",
                   "declined": "老人不同意"}
LOGIN_MESSAGES = {"invalid": ("用户名或密码不对，请再试一次。", 401),
                  "locked": ("密码错误次数太多，账号已暂时锁定。请{minutes}分钟后再试，"
                             "或请管理员运行 python -m assistant staff unlock {username} 解锁。", 423),
                  "throttled": ("这台电脑登录失败的次数太多。请仔细核对用户名和密码后再试；"
                                "仍然不行，请联系管理员。", 429)}
ERROR_MESSAGES = {400: "请求有误。", 403: "您没有权限查看这一页，或表单已过期，请刷新后再试。",
                  404: "没有找到，或不在您负责的范围内。", 409: "当前状态不能这样操作。"}
BIGINT = "int(max=9223372036854775807)"  # ids beyond a database integer are 404, not an overflow



EXPORT_LABELS = {"tickets": "工单", "alerts": "关爱告警", "checkins": "平安电话", "notices": "通知"}
EXPORT_TYPES = {"csv": "text/csv", "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"}


def _percent(share: float | None) -> str:
    return "—" if share is None else f"{round(share * 100)}%"


class StaffConsole:
    """The console's pages over the staff directory, staff queries and the desks of the runtime."""

    def __init__(self, runtime: ChannelRuntime) -> None:
        self.runtime = runtime
        self.directory, self.queries = runtime.staff.directory, runtime.staff.queries
        self.tz = runtime.settings.timezone
        # Form and slot names as staff read them (the same labels the assistant speaks).
        self.domain = runtime.domain
        self.slot_labels = {name: spec.label for name, spec in self.domain.slots.items()}
        # Production sits behind HTTPS; plain-HTTP loopback (development, tests) would drop Secure cookies.
        self.secure_cookie = runtime.settings.env.get("APP_ENV") == "production"
        self.media_links = media_links(runtime)  # photos only through signed, expiring links

    # --- plumbing ------------------------------------------------------------------------------------
    def page(self, template: str, status: int = 200, **values: Any):
        staff = getattr(g, "staff", None)
        nav = [(s, SECTION_LABELS[s]) for s in SECTION_LABELS if staff and s in SECTIONS.get(staff.role, ())]
        return render_template(f"staff_console/{template}", staff=staff, nav=nav, csrf=getattr(g, "csrf", ""),
                               labels=STATUS_LABELS_ZH, **values), status

    def console_time(self, moment: datetime | None) -> str:
        return "—" if moment is None else moment.astimezone(self.tz).strftime("%m月%d日 %H:%M")

    def remaining(self, due: datetime | None) -> str:
        if due is None:
            return ""
        minutes = int((due - self.directory.now()).total_seconds() // 60)
        return f"剩余 {minutes} 分钟" if minutes >= 0 else f"已超时 {-minutes} 分钟"

    def authenticate(self):
        if request.endpoint in (f"{NAME}.login", f"{NAME}.static"):
            return None
        active = self.directory.session(request.cookies.get(COOKIE))
        if active is None:
            return redirect(url_for(f"{NAME}.login"), 303)
        g.staff, g.csrf = active.staff, active.csrf_token
        if request.method == "POST":
            given = request.form.get("csrf_token", "")
            if not safe_equal(given, active.csrf_token):
                abort(403, "CSRF")
        section = SECTION_OF.get((request.endpoint or "").removeprefix(f"{NAME}."))
        if section is not None and not self.queries.allows(g.staff, section):
            abort(403)
        return None

    @staticmethod
    def headers(response):
        response.headers["Cache-Control"] = "no-store"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["Content-Security-Policy"] = (
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
            "frame-ancestors 'none'; form-action 'self'; base-uri 'none'")
        return response

    def http_error(self, exc: HTTPException):
        return self.page("error.html", exc.code or 500, message=ERROR_MESSAGES.get(exc.code or 0, "出错了，请稍后再试。"))

    # --- login ---------------------------------------------------------------------------------------
    def login_form(self, message: str | None = None, status: int = 200):
        token = secrets.token_urlsafe(24)
        body, code = self.page("login.html", status, login_csrf=token, message=message)
        response = make_response(body, code)
        response.set_cookie(LOGIN_COOKIE, token, httponly=True, samesite="Strict", secure=self.secure_cookie,
                            path="/console/login")
        return response

    def login(self):
        if request.method == "GET":
            return self.login_form()
        cookie, given = request.cookies.get(LOGIN_COOKIE, ""), request.form.get("csrf_token", "")
        if not safe_equal(cookie, given):
            abort(403, "CSRF")
        # remote_addr is the TCP peer, or the client named by a trusted proxy (channels/proxies.py).
        result = self.directory.authenticate(request.form.get("username", ""), request.form.get("password", ""),
                                             request.remote_addr or "unknown")
        if result.outcome != "ok" or result.session_token is None:
            message, status = LOGIN_MESSAGES[result.outcome]
            message = message.format(minutes=self.directory.policy.lockout_minutes,
                                     username=result.username or "用户名")
            return self.login_form(message, status)
        response = redirect(url_for(f"{NAME}.home"), 303)
        response.set_cookie(COOKIE, result.session_token, httponly=True, samesite="Strict",
                            secure=self.secure_cookie, path="/console")
        response.delete_cookie(LOGIN_COOKIE, path="/console/login")
        return response

    def logout(self):
        self.directory.logout(request.cookies.get(COOKIE))
        response = redirect(url_for(f"{NAME}.login"), 303)
        response.delete_cookie(COOKIE, path="/console")
        return response

    def home(self):
        for name in SECTION_LABELS:
            if self.queries.allows(g.staff, name):
                return redirect(url_for(f"{NAME}.{name}"), 303)
        abort(403)

    # --- dashboard -----------------------------------------------------------------------------------
    def dashboard(self):
        board = self.runtime.staff.dashboard.build(g.staff)
        demand = hourly_bars(board.demand, self.tz, title="最近72小时每小时新增工单和人工请求")
        kinds = [(k, EXPORT_LABELS[k]) for k, section in KINDS.items() if self.queries.allows(g.staff, section)]
        since, until = self._export_range()
        checkins = None
        if self.queries.allows(g.staff, "outreach"):
            grids = tuple(g.staff.grids) if g.staff.role != "admin" and g.staff.grids else None
            checkins = self.runtime.outreach.checkins.counts(until, grids)
        return self.page("dashboard.html", board=board, demand=demand, meter=meter, percent=_percent,
                         checkins=checkins, checkin_states=CHECKIN_STATES_ZH,
                         export_kinds=kinds, export_since=since, export_until=until,
                         categories=self.runtime.staff.exports.taxonomy.categories)

    def _export_range(self) -> tuple[date, date]:
        """The last seven days, today included: the export form's default and the download's."""
        today = self.directory.now().astimezone(self.tz).date()
        return today - timedelta(days=6), today

    def export(self):
        """CSV or Excel of tickets or alerts in the staff member's scope; masked unless their role
        may take personal data in clear; always an audit entry (backend.people.exports)."""
        kind, fmt = request.args.get("kind", "tickets"), request.args.get("format", "csv")
        if kind not in KINDS or fmt not in EXPORT_TYPES:
            abort(400)
        if not self.queries.allows(g.staff, KINDS[kind]):
            abort(403)
        default_since, default_until = self._export_range()
        try:
            since = date.fromisoformat(request.args["since"]) if request.args.get("since") else default_since
            until = date.fromisoformat(request.args["until"]) if request.args.get("until") else default_until
        except ValueError:
            abort(400)
        if until < since or (until - since).days > 366:
            abort(400)
        start = datetime.combine(since, time.min, self.tz)
        end = datetime.combine(until, time.max, self.tz)
        filters = ExportFilter(start, end, (request.args.get("grid") or "").strip()[:32] or None,
                               (request.args.get("category") or "").strip()[:32] or None)
        table = self.runtime.staff.exports.build(g.staff, kind, filters)
        body = table.csv() if fmt == "csv" else table.xlsx()
        response = Response(body, mimetype=EXPORT_TYPES[fmt])
        response.headers["Content-Disposition"] = f'attachment; filename="{kind}-{since}-{until}.{fmt}"'
        return response

    def weekly(self):
        """周报: one grid's week as an Excel workbook (the week starting on Monday `week`)."""
        grid = (request.args.get("grid") or "").strip()[:32]
        try:
            monday = date.fromisoformat(request.args.get("week") or "")
        except ValueError:
            today = self.directory.now().astimezone(self.tz).date()
            monday = today - timedelta(days=today.weekday())
        if not grid or (g.staff.role != "admin" and g.staff.grids and grid not in g.staff.grids):
            abort(400 if not grid else 403)
        monday -= timedelta(days=monday.weekday())
        response = Response(self.runtime.staff.exports.weekly(g.staff, grid, monday), mimetype=EXPORT_TYPES["xlsx"])
        response.headers["Content-Disposition"] = f'attachment; filename="weekly-{grid}-{monday}.xlsx"'
        return response

    # --- handoffs ------------------------------------------------------------------------------------
    def handoffs(self):
        rows = self.queries.handoffs(g.staff)
        callbacks = self.runtime.outreach.callbacks.states([h.reference for h in rows if h.channel == "voice"])
        return self.page("handoffs.html", rows=rows, reasons=REASONS_ZH, silence=SILENCE_ZH, channels=CHANNELS_ZH,
                         forms=self.domain.labels.get("category", {}), callbacks=callbacks,
                         callback_labels=CALLBACK_LABELS)

    def handoff(self, reference: str):
        if not self.queries.can_see_handoff(g.staff, reference):
            abort(404)
        case = self.runtime.backend.get_case(reference, actor=g.staff.actor)  # audited read
        if case is None:
            abort(404)
        slots = [(self.slot_labels.get(k, k), v) for k, v in form_slots_text(case.fields.get("form_slots"))]
        transcript = case.fields.get("transcript") or []
        code = case.fields.get("reason") or case.category
        reason = SILENCE_ZH if handed_over_in_silence(code, transcript) else REASONS_ZH.get(code, code)
        return self.page("handoff.html", case=case, reason=reason, slots=slots,
                         lines=transcript_lines(transcript, case.channel, self.domain.labels),
                         form_label=self.domain.label("category", case.fields.get("form_name") or ""))

    def handoff_action(self, reference: str, action: str):
        to_status = {"take": "taken", "close": "closed"}.get(action)
        if to_status is None or not self.queries.can_see_handoff(g.staff, reference):
            abort(404)
        self.runtime.backend.set_status("handoff", reference, to_status, g.staff.actor,
                                        request.form.get("note") or None)
        if to_status == "closed":
            return redirect(url_for(f"{NAME}.handoffs"), 303)
        return redirect(url_for(f"{NAME}.handoff", reference=reference), 303)

    # --- tickets -------------------------------------------------------------------------------------
    def ticket_desk(self):
        return self.runtime.ticket_loop.desk

    def tickets(self):
        views = self.ticket_desk().search(scope=self.queries.ticket_scope(g.staff), limit=200, by_deadline=True)
        return self.page("tickets.html", rows=views)

    def map(self):
        """Open and recent tickets with coordinates, over the gazetteer's communities and roads."""
        desk = self.ticket_desk()
        views = desk.search(scope=self.queries.ticket_scope(g.staff), limit=500, by_deadline=True)
        pins = [MapPin(v.reference, v.latitude, v.longitude, v.category_name,
                       "overdue" if v.due_state == "overdue" else "open" if v.status in OPEN_STATUSES else "done")
                for v in views if v.latitude is not None and v.longitude is not None]
        area = desk.settings.service_area
        bbox = (area.min_lat, area.max_lat, area.min_lon, area.max_lon) if area else None
        drawing = work_order_map(desk.gazetteer.places, pins, bbox,
                                 lambda ref: url_for(f"{NAME}.ticket", reference=ref))
        return self.page("map.html", drawing=drawing, pins=pins, unplaced=len(views) - len(pins))

    def ticket(self, reference: str):
        if not self.queries.can_see_ticket(g.staff, reference):
            abort(404)
        view = self.ticket_desk().view(reference, actor=g.staff.actor)  # audited read with the private fields
        if view is None:
            abort(404)
        media = self.ticket_desk().media
        photos = [self.media_links.path(path.name) for sha, _ in view.media if (path := media.find(sha))]
        return self.page("ticket.html", ticket=view, actions=TICKET_ACTIONS, photos=photos)

    def ticket_action(self, reference: str):
        action, note = request.form.get("action", ""), (request.form.get("note") or "").strip()[:500] or None
        if action not in TICKET_ACTIONS:
            abort(400)
        if not self.queries.can_see_ticket(g.staff, reference):
            abort(404)
        try:
            self.ticket_desk().staff_action(reference, action, g.staff.actor, note=note)
        except TransitionError:
            abort(409)
        except ValueError:
            return self.page("error.html", 400, message="办结或退回时请填写说明。")
        return redirect(url_for(f"{NAME}.ticket", reference=reference), 303)

    # --- care alerts ---------------------------------------------------------------------------------
    def alerts(self):
        return self.page("alerts.html", rows=self.queries.alerts(g.staff), remaining=self.remaining,
                         states=ALERT_STATES_ZH, levels=LEVELS_ZH, rules=RULES_ZH, actions=ALERT_ACTIONS,
                         now_iso=self.directory.now().isoformat())

    def alert_action(self, alert_id: int, action: str):
        if action not in ALERT_ACTIONS or not self.queries.can_see_alert(g.staff, alert_id):
            abort(404)
        self.runtime.alerts.staff_action(alert_id, action, g.staff.username,
                                         (request.form.get("note") or "").strip()[:200] or None)
        return redirect(url_for(f"{NAME}.alerts"), 303)

    # --- outreach: check-in streaks, notices -----------------------------------------------------------
    def outreach(self, preview: Any = None, draft: dict[str, str] | None = None, error: str | None = None,
                 status: int = 200):
        outreach = self.runtime.outreach
        today = self.directory.now().astimezone(self.tz).date()
        grids = tuple(g.staff.grids) if g.staff.role != "admin" and g.staff.grids else None
        return self.page("outreach.html", status, checkins=outreach.checkins.summaries(today, grids),
                         states=CHECKIN_STATES_ZH, notices=outreach.notices.reports(limit=20),
                         delivery=DELIVERY_STATES_ZH, channels=NOTICE_CHANNELS_ZH, preview=preview,
                         draft=draft or {}, error=error, own_grids=grids or (), can_send=self._may_send())

    def _may_send(self) -> bool:
        return g.staff.role in ("admin", "grid_worker")

    def _notice_form(self) -> tuple[dict[str, str], Any]:
        from backend.outreach.notices import Audience

        draft = {k: (request.form.get(k) or "").strip() for k in ("title", "body", "audience", "grids", "building",
                                                                   "channel", "urgent")}
        grids = tuple(x for x in draft["grids"].replace("，", ",").split(",") if x.strip())
        if g.staff.role != "admin" and g.staff.grids:  # a grid worker reaches their own grids only
            if draft["audience"] in ("all", "") or any(x not in g.staff.grids for x in grids):
                draft["audience"], grids = "grid", tuple(g.staff.grids)
        grids = tuple(x.strip() for x in grids)
        draft["grids"] = ",".join(grids)  # what the page shows is what is sent
        return draft, Audience(draft["audience"] or "all", grids, draft["building"] or None)

    def notice_preview(self):
        if not self._may_send():
            abort(403)
        try:
            draft, audience = self._notice_form()
            preview = self.runtime.outreach.notices.preview(draft["title"], draft["body"], audience,
                                                            draft["channel"] or "preference")
        except ValueError as exc:
            return self.outreach(draft=dict(request.form), error=str(exc), status=400)
        return self.outreach(preview=preview, draft=draft)

    def notice_send(self):
        if not self._may_send():
            abort(403)
        try:
            draft, audience = self._notice_form()
            self.runtime.outreach.notices.create(draft["title"], draft["body"], audience,
                                                 draft["channel"] or "preference", g.staff.actor,
                                                 urgent=draft["urgent"] == "1")
        except ValueError as exc:
            return self.outreach(draft=dict(request.form), error=str(exc), status=400)
        return redirect(url_for(f"{NAME}.outreach"), 303)

    # --- residents -----------------------------------------------------------------------------------
    def residents(self):
        query = (request.args.get("q") or "").strip()[:40]
        return self.page("residents.html", rows=self.queries.residents(g.staff, query or None), query=query)

    def resident_page(self, row: Any):
        grants = self.queries.grants(g.staff, senior_resident_id=row.id)
        return self.page("resident.html", resident=row, grants=grants, relations=RELATION_LABELS_ZH,
                         scopes=SCOPE_LABELS_ZH, grant_states=GRANT_STATUS_ZH)

    def resident(self, resident_id: int):
        row = self.queries.resident(g.staff, resident_id)
        if row is None:
            abort(404)
        return self.resident_page(row)

    def reveal(self, resident_id: int):
        row = self.queries.reveal_resident(g.staff, resident_id, (request.form.get("reason") or "").strip())
        if row is None:
            abort(404)
        return self.resident_page(row)

    # --- proxy grants --------------------------------------------------------------------------------
    def grants(self):
        return self.page("grants.html", grants=self.queries.grants(g.staff), relations=RELATION_LABELS_ZH,
                         scopes=SCOPE_LABELS_ZH, grant_states=GRANT_STATUS_ZH)

    def revoke(self, grant_id: int):
        proxies = self.runtime.proxies
        if proxies is None or not self.queries.can_see_grant(g.staff, grant_id):
            abort(404)
        proxies.revoke(grant_id, by=g.staff.actor)
        back = request.form.get("back")
        if back and back.isascii() and back.isdigit() and len(back) <= 18:
            return redirect(url_for(f"{NAME}.resident", resident_id=int(back)), 303)
        return redirect(url_for(f"{NAME}.grants"), 303)


# (methods, rule, handler, the section a staff role must have, or None: login and home check themselves)
ROUTES: list[tuple[str, str, Callable[..., Any], str | None]] = [
    ("GET,POST", "/login", StaffConsole.login, None),
    ("POST", "/logout", StaffConsole.logout, None),
    ("GET", "/", StaffConsole.home, None),
    ("GET", "/dashboard", StaffConsole.dashboard, "dashboard"),
    ("GET", "/export", StaffConsole.export, "dashboard"),  # and the section of what is exported
    ("GET", "/weekly", StaffConsole.weekly, "dashboard"),
    ("GET", "/handoffs", StaffConsole.handoffs, "handoffs"),
    ("GET", "/handoffs/<reference>", StaffConsole.handoff, "handoffs"),
    ("POST", "/handoffs/<reference>/<action>", StaffConsole.handoff_action, "handoffs"),
    ("GET", "/tickets", StaffConsole.tickets, "tickets"),
    ("GET", "/map", StaffConsole.map, "map"),
    ("GET", "/tickets/<reference>", StaffConsole.ticket, "tickets"),
    ("POST", "/tickets/<reference>/act", StaffConsole.ticket_action, "tickets"),
    ("GET", "/alerts", StaffConsole.alerts, "alerts"),
    ("GET", "/outreach", StaffConsole.outreach, "outreach"),
    ("POST", "/outreach/preview", StaffConsole.notice_preview, "outreach"),
    ("POST", "/outreach/send", StaffConsole.notice_send, "outreach"),
    ("POST", f"/alerts/<{BIGINT}:alert_id>/<action>", StaffConsole.alert_action, "alerts"),
    ("GET", "/residents", StaffConsole.residents, "residents"),
    ("GET", f"/residents/<{BIGINT}:resident_id>", StaffConsole.resident, "residents"),
    ("POST", f"/residents/<{BIGINT}:resident_id>/reveal", StaffConsole.reveal, "residents"),
    ("GET", "/grants", StaffConsole.grants, "grants"),
    ("POST", f"/grants/<{BIGINT}:grant_id>/revoke", StaffConsole.revoke, "grants"),
]
# Endpoint → section, checked for every request after login (the navigation is only a convenience).
SECTION_OF = {handler.__name__: section for _, _, handler, section in ROUTES if section}


def make_blueprint(runtime: ChannelRuntime) -> Blueprint:
    console = StaffConsole(runtime)
    bp = Blueprint(NAME, __name__, url_prefix="/console", template_folder="templates",
                   static_folder="static/staff_console", static_url_path="/static")
    bp.before_request(console.authenticate)
    bp.after_request(console.headers)
    bp.register_error_handler(HTTPException, console.http_error)
    bp.add_app_template_filter(console.console_time, "console_time")
    return register(bp, [(methods, rule, handler) for methods, rule, handler, _ in ROUTES], console)
