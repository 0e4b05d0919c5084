"""Property-based fuzz of the whole API from its own OpenAPI schema (schemathesis, in-process ASGI), on both
backends, authenticated with a tenant's key: valid and invalid inputs for every operation never give a 5xx, every
4xx/5xx body has the one error shape ``{"error": {"code", "message", "param"}}``, responses match their declared
schema and content type, invalid input is refused with a 4xx, schema-valid input is accepted (the schema says what
the API enforces: e.g. a student is exactly one of its kinds, a oneOf), and a 405 carries an ``Allow`` header that
lists every documented method of the path. Derandomised (a fixed seed per test) and bounded, so a run is
reproducible."""

from __future__ import annotations

import hypothesis
import pytest

from tests.tenancy import bearer, make_tenant

pytestmark = pytest.mark.slow
import schemathesis
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance, status_code_conformance,
    negative_data_rejection, positive_data_acceptance,
    response_schema_conformance, unsupported_method,
)

MAX_EXAMPLES = 8  # per operation and generation mode


BEYOND_SCHEMA_CODES = frozenset({"file_not_found", "wrong_file_purpose", "invalid_file", "webhook_target_refused",
                                 "invalid_search_space"})
"""422 codes about what a request refers to or carries, which no JSON Schema can say: an uploaded file that does not
exist or has another purpose, an upload whose bytes are no known format, a webhook host that does not resolve to a
public address; a sweep dimension whose values the job spec refuses at its dotted path (the sweep's schema cannot point
into the job spec's). A schema promises which requests are well formed, not which files exist (as schemathesis itself
reasons about credentials)."""


CROSS_FIELD_OPERATIONS = frozenset({("POST", "/v1/sweeps")})
"""Operations whose 422s the schema does not yet fully predict: a sweep's rules across fields (a dimension's low <= high,
a sampled value valid for the job spec at its dotted path, a grid sampler's finite space) are checked by the API, not
written into its JSON Schema. Every other check still runs on them. Known gap, listed in the issue note."""


@schemathesis.check
def accepts_schema_valid_data(ctx, response, case) -> None:
    """``positive_data_acceptance``, except a 422 whose code is one of ``BEYOND_SCHEMA_CODES``."""
    if response.status_code == 422 and response.json().get("error", {}).get("code") in BEYOND_SCHEMA_CODES:
        return None
    if response.status_code == 422 and (case.method.upper(), case.operation.path) in CROSS_FIELD_OPERATIONS:
        return None
    return positive_data_acceptance(ctx, response, case)


@schemathesis.check
def allow_lists_documented_methods(ctx, response, case) -> None:
    """A 405's ``Allow`` header names every method the schema documents for the path (``unsupported_method`` only
    checks that there is one)."""
    if response.status_code != 405:
        return None
    documented = {m.upper() for m in case.operation.schema.raw_schema["paths"][case.operation.path]
                  if m in ("get", "put", "post", "delete", "patch", "head", "options", "trace")}
    allowed = {m.strip().upper() for m in response.headers.get("allow", [""])[0].split(",") if m.strip()}
    assert documented <= allowed, f"Allow: {sorted(allowed)} omits documented {sorted(documented - allowed)}"
    return None


@schemathesis.check
def error_shape(ctx, response, case) -> None:
    """Every 4xx/5xx body is exactly ``{"error": {"code": str, "message": str, "param": str | null}}``."""
    if response.status_code < 400 or case.method.upper() == "HEAD":  # a HEAD answer has no body to check
        return None
    body = response.json()
    assert isinstance(body, dict) and set(body) == {"error"}, f"error body is not {{'error': ...}}: {body!r}"
    err = body["error"]
    assert isinstance(err, dict) and set(err) == {"code", "message", "param"}, f"error object keys: {err!r}"
    assert isinstance(err["code"], str) and err["code"], err
    assert isinstance(err["message"], str) and err["message"], err
    assert err["param"] is None or isinstance(err["param"], str), err
    return None


def _schema():
    """The app's schema, fetched from the app itself (in-process), with positive and negative generation.

    Loaded at import: the app reads its settings per request, so the ``backend`` fixture each test takes
    decides which database the calls reach. (``schemathesis.pytest.from_fixture`` fails on pytest 9.)
    """
    from app.main import create_app

    s = schemathesis.openapi.from_asgi("/openapi.json", create_app(auto_migrate=False))
    s.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
    return s


schema = _schema()


@schema.parametrize()
@hypothesis.settings(max_examples=MAX_EXAMPLES, derandomize=True, deadline=None, database=None,
                     suppress_health_check=list(hypothesis.HealthCheck), phases=[hypothesis.Phase.explicit,
                                                                                 hypothesis.Phase.generate])
def test_api_from_its_schema(case, backend, fuzz_key):
    case.call_and_validate(headers=bearer(fuzz_key), checks=[
        not_a_server_error, error_shape, response_schema_conformance, content_type_conformance, status_code_conformance,
        negative_data_rejection, accepts_schema_valid_data, unsupported_method, allow_lists_documented_methods])


@pytest.fixture
def fuzz_key(backend) -> str:
    """A key of a fresh tenant (schemathesis' ASGI client is not on loopback, so every call needs one)."""
    return make_tenant("fuzz")[1]


# ------------------------------------------------------------------ regressions of what fuzzing the API found

@pytest.mark.parametrize("path", ["/v1/files/a%00b", "/v1/files?after=a%00b", "/v1/jobs/a%00b", "/v1/jobs?after=x%00",
                                  "/v1/jobs/a%00b/events", "/v1/jobs/job_x/metrics?name=loss%00", "/v1/reports?job_ids=a%00b",
                                  "/v1/jobs/a%00b/report.html", "/v1/files/x%00/layers"])
async def test_nul_in_path_or_query_is_a_422_on_every_backend(api, backend, path):
    """On PostgreSQL a NUL reached the query and psycopg raised: a 500."""
    resp = await api.get(path)
    assert resp.status_code == 422, resp.text
    assert resp.json()["error"]["code"] == "invalid_request" and "NUL" in resp.json()["error"]["message"]


@pytest.mark.parametrize("over,param", [({"name": "a\u0000b"}, "name"), ({"teacher": {"file_id": "file_\u0000"}}, "teacher.file_id"),
                                        ({"student": {"architecture": {"name": "mlp", "kwargs": {"k\u0000": 1}}}},
                                         "student.architecture.kwargs")])
async def test_nul_in_a_job_spec_is_a_422_naming_the_field(api, backend, over, param):
    """The error's param is the field holding the NUL (for a key: the object holding that key); it was null."""
    spec = {"teacher": {"file_id": "file_nope"}, "student": {"architecture": {"name": "mlp"}},
            "data": {"train": {"builtin": "digits"}}, **over}
    resp = await api.post("/v1/jobs", json=spec)
    assert resp.status_code == 422, resp.text
    err = resp.json()["error"]
    assert "NUL" in err["message"] and err["param"] == param, err
    assert err["message"].startswith(f"{param}: ") and "Value error" not in err["message"]


async def test_undecodable_json_body_is_a_422_like_any_invalid_json(api, backend):
    """FastAPI answers 400 for a body that is not UTF-8, undocumented; invalid JSON is a 422 everywhere else."""
    resp = await api.post("/v1/jobs", content=b"\xff\xfe{", headers={"content-type": "application/json"})
    assert resp.status_code == 422 and resp.json()["error"]["code"] == "invalid_request", resp.text


def test_html_routes_document_their_errors_as_json():
    """report.html declared its 404/409/422 as text/html while sending the JSON error shape."""
    from app.main import create_app

    responses = create_app(auto_migrate=False).openapi()["paths"]["/v1/jobs/{job_id}/report.html"]["get"]["responses"]
    assert list(responses["200"]["content"]) == ["text/html"]
    for code in ("404", "409", "422"):
        assert list(responses[code]["content"]) == ["application/json"], (code, responses[code])
