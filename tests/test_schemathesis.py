"""Schemathesis against /openapi.json of the real app (real SQLite, real NLU, in-process WSGI): every
operation of the public API, with generated valid and invalid requests, answers without a server
error. A bounded number of examples per operation keeps CI fast."""
from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from test_boundary import DEVICE, OPEN311_KEY, STAFF, public_app


@pytest.fixture(scope="module")
def app(tmp_path_factory, model_dir, nlu):
    yield from public_app(tmp_path_factory, model_dir, nlu, "schemathesis")


@pytest.fixture(scope="module")
def api_schema(app):
    return schemathesis.openapi.from_wsgi("/openapi.json", app)


schema = schemathesis.pytest.from_fixture("api_schema")


def credentials(path: str) -> dict[str, str]:
    """Valid credentials, so the fuzz reaches past the token checks into the handlers."""
    if path.startswith("/staff/api/") and not path.endswith("/login"):
        return STAFF
    return DEVICE if path.startswith("/api/sensors") else {}


@schema.parametrize()
@settings(max_examples=15, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                 HealthCheck.function_scoped_fixture])
def test_api_never_answers_with_a_server_error(case):
    if case.path == "/open311/v2/requests.json" and case.method == "POST" and isinstance(case.body, dict):
        case.body["api_key"] = OPEN311_KEY  # a city tool's key: filing itself is fuzzed, not just refused
    case.call_and_validate(headers=credentials(case.path), checks=[not_a_server_error])
