"""Staff console (web) for departments: one page over the staff API (channels/staff_api.py).

GET /staff/console  the page. It asks for the staff token once (kept in the tab's
sessionStorage, sent as a bearer header to the API), lists the triage queue and open tickets,
shows a ticket's history, and accepts / starts / resolves (note + photo) / rejects / routes.
Every action goes through the API, so the rules and the resident's SMS are the same.
"""
from __future__ import annotations

from flask import Blueprint, render_template

from channels.runtime_port import ChannelRuntime

NAME = "staff_console"


def make_blueprint(runtime: ChannelRuntime) -> Blueprint:
    bp = Blueprint(NAME, __name__, template_folder="templates")
    desk = runtime.ticket_loop.desk

    @bp.get("/staff/console")
    def console():
        departments = sorted({c.department for c in desk.taxonomy.categories if c.department}
                             | {d for grid in desk.settings.grid_departments.values() for d in grid.values()})
        return render_template("staff_console.html", departments=departments,
                               triage=desk.settings.triage_queue)

    return bp
