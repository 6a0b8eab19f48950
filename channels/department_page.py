"""Department ticket page (web): one page over the token API (channels/staff_api.py), for a
department's handlers. Not to be confused with the server-rendered staff console
(channels/staff_console.py, /console), which has logins, roles, handoffs, alerts and residents.

GET /staff/console  the page. It asks for the staff token once (kept in the tab's
sessionStorage, sent as a bearer header to the API), lists the triage queue and open tickets,
shows a ticket's history, and accepts / starts / resolves (note + photo) / rejects / routes.
Every action goes through the API, so the rules and the resident's SMS are the same.
"""
from __future__ import annotations

from flask import Blueprint, render_template

from channels.routes import Route, register
from channels.runtime_port import ChannelRuntime

# The blueprint's name is what metrics label and the index list it by: kept from before the
# module was renamed, so dashboards keep counting the same channel.
NAME = "staff_console"


class DepartmentPage:
    def __init__(self, runtime: ChannelRuntime) -> None:
        self.desk = runtime.ticket_loop.desk

    def console(self):
        return render_template("department_page.html", departments=self.desk.departments(),
                               triage=self.desk.settings.triage_queue)


ROUTES: list[Route] = [
    ("GET", "/staff/console", DepartmentPage.console),
]


def make_blueprint(runtime: ChannelRuntime) -> Blueprint:
    return register(Blueprint(NAME, __name__, template_folder="templates"), ROUTES, DepartmentPage(runtime))
