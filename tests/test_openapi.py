"""``/openapi.json``: loa's HTTP side describes itself, and holds up to requests made from that description.

The document is checked against the OpenAPI 3.1 specification (openapi-spec-validator) and
must list every endpoint of loa's route table.  schemathesis then reads it from the running
application and sends the requests it generates from it: valid ones and invalid ones, with
and without the bearer token, to every operation.  None may answer 5xx, and each answer must
match what the document says of that operation (status, content type, body schema).

The application runs in process (schemathesis's ASGI transport) on the digest tests' world:
campaigns sent, a report to make, subscribers to greet.  The run is kept short
(``MAX_EXAMPLES`` per operation, derandomised so every run sends the same requests).
"""

from __future__ import annotations

import re
import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from openapi_spec_validator import OpenAPIV31SpecValidator, validate
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    positive_data_acceptance,
    unsupported_method,
)
from sqlalchemy.engine import Engine
from test_web import sent  # noqa: F401 - the digest's world, a fixture

from loa import web as web_package
from loa.config import Config
from loa.serve import Service
from loa.web import Web

TOKEN = "fuzz-token"
MAX_EXAMPLES = 15
# Left out: "unsupported method" (loa answers a method a path does not take with the plain 404 of
# an unknown path, as it always has, not 405), and "schema-valid data accepted": well-formed data
# may still name nothing the ledger knows (an area level never imported, a phone of no subscriber),
# which the API refuses with the field named (400, 422).
EXCLUDED = [unsupported_method, positive_data_acceptance]


def routes() -> set[tuple[str, str]]:
    """(method, path) of every row of loa.web's route table, in OpenAPI's spelling."""
    found = set()
    for methods, path in re.findall(r"^``([A-Z|]+) (/\S+)``", web_package.__doc__ or "", re.MULTILINE):
        path = re.sub(r"/(NAME|CODE)$", lambda m: "/{" + m.group(1).lower() + "}", path)
        found |= {(m.lower(), path) for m in methods.split("|")}
    return found


@pytest.fixture
def service(engine: Engine, sent: Config, monkeypatch: pytest.MonkeyPatch) -> Iterator[Service]:  # noqa: F811
    monkeypatch.setenv("LOA_ARRIVALS_TOKEN", TOKEN)
    svc = Service(engine, sent, port=0, workers=0, scheduler=False)
    svc.start()
    try:
        yield svc
    finally:
        svc.stop()


def test_openapi_json_is_openapi_3_1_and_describes_every_endpoint(service: Service) -> None:
    r = requests.get(f"http://127.0.0.1:{service.port}/openapi.json", timeout=10)
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/json"
    doc = r.json()
    assert doc["openapi"].startswith("3.1.")
    validate(doc, cls=OpenAPIV31SpecValidator)        # raises on anything the specification forbids

    described = {(method, path) for path, item in doc["paths"].items() for method in item
                 if method in ("get", "post", "put", "patch", "delete", "head")}
    table = routes()
    assert {("post", "/hooks/{name}"), ("get", "/l/{code}"), ("post", "/arrivals"), ("get", "/report"),
            ("get", "/healthz"), ("get", "/metrics"), ("get", "/openapi.json")} <= table
    assert table - {("get", "/openapi.json")} <= described       # the document itself is not an operation
    for (method, path) in described:
        operation = doc["paths"][path][method]
        assert operation.get("summary") and operation.get("responses"), (method, path)

    # loa's own API endpoints: their errors are one JSON shape, and the document says so
    error = doc["components"]["schemas"]["ErrorDetail"]
    assert set(error["required"]) == {"code", "message", "field"}
    for method, path in (("post", "/arrivals"), ("get", "/report")):
        responses = doc["paths"][path][method]["responses"]
        assert {"400", "401", "503"} <= set(responses), path
        for status in ("400", "401", "503"):
            ref = responses[status]["content"]["application/json"]["schema"]["$ref"]
            assert ref == "#/components/schemas/ErrorBody", (path, status)
        assert doc["paths"][path][method]["security"][0] == {"bearerToken": []}
    assert doc["components"]["securitySchemes"]["bearerToken"]["scheme"] == "bearer"

    # /api/v1: every operation takes an API key (sign-in aside), and says its errors in the one shape
    assert doc["components"]["securitySchemes"]["apiKey"] == {
        "type": "http", "scheme": "bearer", "description": doc["components"]["securitySchemes"]["apiKey"]["description"]}
    api = {(method, path): op for path, item in doc["paths"].items() if path.startswith("/api/v1/")
           for method, op in item.items()}
    assert {("get", "/api/v1/campaigns"), ("post", "/api/v1/campaigns/{name}/pause"), ("post", "/api/v1/stop"),
            ("post", "/api/v1/imports/{kind}"), ("get", "/api/v1/imports/{job_id}/rejects"),
            ("delete", "/api/v1/keys/{key_id}"), ("get", "/api/v1/audit"), ("post", "/api/v1/login")} <= set(api)
    for (method, path), op in api.items():
        public = path == "/api/v1/login"
        assert op["security"] == ([] if public else [{"apiKey": []}]), (method, path)
        for status in ("422",) + (() if public else ("401",)):
            ref = op["responses"][status]["content"]["application/json"]["schema"]["$ref"]
            assert ref == "#/components/schemas/ErrorBody", (method, path, status)


def test_api_errors_are_one_json_shape_over_http(service: Service) -> None:
    base = f"http://127.0.0.1:{service.port}"
    answers = [
        requests.post(f"{base}/arrivals", json={"phone": "0912000000", "area": "116"}, timeout=10),   # no token
        requests.post(f"{base}/arrivals", data=b"{nope", timeout=10, headers={"Authorization": f"Bearer {TOKEN}"}),
        requests.get(f"{base}/report", params={"format": "pdf"}, timeout=10),
        requests.get(f"{base}/report", params={"campaign": "nope"}, timeout=10),
    ]
    assert [r.status_code for r in answers] == [401, 400, 400, 404]
    for r in answers:
        assert r.headers["Content-Type"] == "application/json", r.text
        body = r.json()
        assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "field"}, body
        assert body["error"]["message"] and "\n" not in body["error"]["message"]
    assert [r.json()["error"]["field"] for r in answers] == ["Authorization", None, "format", "campaign"]
    # a gateway callback keeps its gateway's plain answers, an unknown path its plain 404
    assert requests.post(f"{base}/hooks/nosuch", data=b"x", timeout=10).text == "no such gateway\n"
    assert requests.get(f"{base}/nothing", timeout=10).text == "not found\n"


# -- schemathesis -------------------------------------------------------------------------
# schemathesis's own pytest loader (``schemathesis.pytest.from_fixture``) fails under pytest 9
# (it reads the removed ``Function._nodeid``), and its module-level one needs the application at
# import time, before there is a database: so each operation's strategy is drawn by hypothesis here.

@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_generated_request_gets_a_5xx_or_an_answer_the_document_does_not_describe(
        engine: Engine, sent: Config, monkeypatch: pytest.MonkeyPatch, mode: GenerationMode) -> None:  # noqa: F811
    monkeypatch.setenv("LOA_ARRIVALS_TOKEN", TOKEN)
    application = Web(engine, sent)
    api = schemathesis.openapi.from_asgi("/openapi.json", application)
    calls: Counter[str] = Counter()
    keys: Counter[str] = Counter()
    real = existing_objects(engine)

    def check(case: Any, auth: bool, existing: Any) -> None:
        if existing is not None and case.path_parameters:    # an existing campaign, run, key...: past the 404
            case.path_parameters[re.findall(r"\{(\w+)\}", case.operation.path)[0]] = existing
        if auth:      # else whatever schemathesis made of the security scheme: none, or a wrong token
            if case.headers is None:
                case.headers = {}
            # the API's routes take an admin key, new for each request (one may revoke another)
            case.headers["Authorization"] = f"Bearer {api_key(engine, 'admin')}" \
                if case.operation.path.startswith("/api/") else f"Bearer {TOKEN}"
        response = case.call_and_validate(excluded_checks=EXCLUDED)
        assert response.status_code < 500, (case.method, case.formatted_path, response.text)
        calls[f"{case.method} {case.operation.path}"] += 1
        keys["admin key" if auth and case.operation.path.startswith("/api/") else "token" if auth else
             "no key or a wrong one"] += 1

    try:
        operations = [result.ok() for result in api.get_all_operations()]
        assert {f"{op.method.upper()} {op.path}" for op in operations} >= {
            "GET /hooks/{name}", "POST /hooks/{name}", "GET /l/{code}", "HEAD /l/{code}", "POST /arrivals",
            "GET /report", "GET /healthz", "GET /metrics", "GET /api/v1/campaigns", "POST /api/v1/stop",
            "POST /api/v1/imports/{kind}", "POST /api/v1/users", "DELETE /api/v1/keys/{key_id}"}
        for operation in operations:
            objects = [None, *next((v for k, v in real.items() if operation.path.startswith(k)), [])]

            @given(case=operation.as_strategy(generation_mode=mode), auth=st.booleans(),
                   existing=st.sampled_from(objects))
            @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
                      suppress_health_check=list(HealthCheck))
            def fuzz(case: Any, auth: bool, existing: Any) -> None:
                check(case, auth, existing)

            try:
                fuzz()
            except Unsatisfiable:   # only strings in the path, or nothing at all: no request can break the schema
                assert mode == GenerationMode.NEGATIVE and not operation.body and not operation.query, operation
    finally:
        imports_done()
        application.pool.close()
    print(f"\nschemathesis {mode.value}: {calls.total()} requests to {len(calls)} operations "
          f"({', '.join(f'{n} with {k}' for k, n in sorted(keys.items()))}), none 5xx")
    wanted = operations if mode == GenerationMode.POSITIVE else [op for op in operations if op.body or op.query]
    assert wanted and all(calls[f"{op.method.upper()} {op.path}"] for op in wanted), calls


def existing_objects(engine: Engine) -> dict[str, list[Any]]:
    """By the start of an API path: the names or ids of objects that exist there."""
    from sqlalchemy import select

    from loa import db

    with engine.connect() as conn:
        return {"/api/v1/campaigns/": list(conn.scalars(select(db.campaigns.c.name))),
                "/api/v1/runs/": list(conn.scalars(select(db.runs.c.id))),
                "/api/v1/keys/": list(conn.scalars(select(db.api_keys.c.id))),
                "/api/v1/users/": list(conn.scalars(select(db.users.c.name))), "/api/v1/gateways/": ["sim"]}


def api_key(engine: Engine, role: str) -> str:
    from loa import auth

    return auth.create_key(engine, "os:test", role)[1]


def imports_done() -> None:
    """Wait for the imports that the requests started (a thread each) to end."""
    for thread in threading.enumerate():
        if thread.name.startswith("loa-import-"):
            thread.join(timeout=120)
            assert not thread.is_alive(), f"{thread.name} still running after 120 s"


def database(engine: Engine) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table (but when a key was last used, which reading it updates)."""
    from sqlalchemy import select

    from loa import db

    out = {}
    with engine.connect() as conn:
        for table in db.metadata.sorted_tables:
            columns = [c for c in table.columns if c.name != "last_used_at"]
            out[table.name] = sorted(conn.execute(select(*columns)).all(), key=repr)
    return out


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_generated_request_without_the_role_changes_anything(
        engine: Engine, sent: Config, mode: GenerationMode) -> None:  # noqa: F811
    """Every request of the API that may change state, sent with a viewer's key or with none
    (or with whatever schemathesis makes of the security scheme): refused, and the database as it was."""

    from loa import auth
    from loa import gateways as gw

    application = Web(engine, sent)
    viewer = api_key(engine, "viewer")
    auth.add_user(engine, "os:test", "ana", "a long password", "operator")
    gw.pause(engine, "sim", "auth error")
    real = existing_objects(engine)    # objects that exist, so that a refusal is not only a 404
    api = schemathesis.openapi.from_asgi("/openapi.json", application)
    answers: Counter[tuple[str, int]] = Counter()
    try:
        operations = [result.ok() for result in api.get_all_operations()]
        # a preview and a review show subscribers' messages: each read is written to the audit log
        changing = [op for op in operations if op.path.startswith("/api/v1/") and op.path != "/api/v1/login"
                    and (op.method.upper() in ("POST", "PUT", "PATCH", "DELETE")
                         or op.path.endswith(("/preview", "/review")))]
        assert {"POST /api/v1/campaigns", "POST /api/v1/campaigns/{name}/test", "GET /api/v1/campaigns/{name}/preview",
                "POST /api/v1/campaigns/{name}/approve", "POST /api/v1/stop"} <= {
            f"{op.method.upper()} {op.path}" for op in changing}, [op.path for op in changing]
        before = database(engine)
        for operation in changing:
            objects = next((v for k, v in real.items() if operation.path.startswith(k)), [None])

            @given(case=operation.as_strategy(generation_mode=mode), as_viewer=st.booleans(),
                   existing=st.sampled_from(objects))
            @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
                      suppress_health_check=list(HealthCheck))
            def fuzz(case: Any, as_viewer: bool, existing: Any) -> None:
                if existing is not None and case.path_parameters:
                    [param] = case.path_parameters
                    case.path_parameters[param] = existing
                if as_viewer:
                    if case.headers is None:
                        case.headers = {}
                    case.headers["Authorization"] = f"Bearer {viewer}"
                response = case.call_and_validate(excluded_checks=EXCLUDED)
                assert response.status_code in (401, 403, 404, 422), (case.method, case.formatted_path,
                                                                         response.status_code, response.text)
                if mode == GenerationMode.POSITIVE and "NUL character" not in response.text:
                    # data the document allows: the role is checked before anything in it is read
                    assert response.status_code == (403 if as_viewer else 401), (
                        case.method, case.formatted_path, response.status_code, response.text)
                answers["viewer key" if as_viewer else "no key or a wrong one", response.status_code] += 1

            try:
                fuzz()
            except Unsatisfiable:
                assert mode == GenerationMode.NEGATIVE and not operation.body and not operation.query, operation
        imports_done()
        assert database(engine) == before
    finally:
        application.pool.close()
    by_key = {who: {code: n for (w, code), n in sorted(answers.items()) if w == who} for who, _ in answers}
    print(f"\nschemathesis {mode.value} without the role: {answers.total()} requests to {len(changing)} operations "
          f"that change state, none changed anything ({'; '.join(f'{who}: {codes}' for who, codes in sorted(by_key.items()))})")
    assert by_key["no key or a wrong one"].get(401) and by_key["viewer key"].get(403), by_key
