"""Fuzzing the REST API (issue 15 item 3): schemathesis generates requests for every
operation of the live server's own schema (`/api/v1/schema/`), valid and invalid ones,
sent with a real device token of an org's owner (every permission, so the admin endpoints
are reached too). No answer is a 5xx, and every answer matches what the schema says of it.

The budget is bounded (FUZZ_EXAMPLES per operation and kind, no shrinking), so the test
stays within a few minutes; raise SIPHERA_FUZZ_EXAMPLES for a longer hunt.
"""

from __future__ import annotations

import os

import hypothesis
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given
from schemathesis import GenerationMode
from schemathesis.core.failures import Failure, FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
)

from tests.fixtures import Api, create_org, host_of, make_user, register_device, unique

FUZZ_EXAMPLES = int(os.environ.get("SIPHERA_FUZZ_EXAMPLES", "6"))
CHECKS = [response_schema_conformance, content_type_conformance]


def _crashed(operation, status: int) -> bool:
    """A 5xx is a crash, except a 503 the operation documents (a service this server
    was not configured with, such as LiveKit or TURN, answers a documented 503)."""
    documented = str(status) in operation.definition.raw.get("responses", {})
    return status >= 500 and not (status == 503 and documented)


class Owner:
    """An owner's device token, registered anew whenever the fuzzer revoked it (a
    generated `DELETE /devices/{id}` may hit the very device sending it)."""

    def __init__(self, server, org):
        self.api = Api(server, host_of(org))
        self.user = make_user(org, role="owner")
        self.renew()

    def renew(self) -> None:
        _, self.token, _ = register_device(self.api, self.user.username, name="fuzzer")

    def renew_if_revoked(self) -> None:
        if self.api.as_device(self.token).get("/api/v1/me").status_code == 401:
            self.renew()

    def headers(self) -> dict:
        return {"Host": self.api.host, "Authorization": f"Bearer {self.token}"}


@pytest.fixture(scope="module")
def fuzz_target(server):
    org = create_org(unique("fuzz"))
    owner = Owner(server, org)
    schema = schemathesis.openapi.from_url(
        f"http://127.0.0.1:{server.port}/api/v1/schema/", headers={"Host": owner.api.host}
    )
    return server, owner, schema


def _operations(schema):
    return [result.ok() for result in schema.get_all_operations()]


def test_the_fuzzer_sees_every_operation(fuzz_target):
    _, _, schema = fuzz_target
    paths = {op.path for op in _operations(schema)}
    assert {"/api/v1/conversations", "/api/v1/users", "/api/v1/keys/{user_id}"} <= paths
    assert len(paths) > 40


def _fuzz(operation, mode, server, owner) -> list[str]:
    failures: list[str] = []
    base_url = f"http://127.0.0.1:{server.port}"

    @hypothesis.settings(
        max_examples=FUZZ_EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case):
        response = case.call(base_url=base_url, headers=owner.headers(), timeout=30)
        if response.status_code == 401:
            owner.renew_if_revoked()  # the case may have revoked the fuzzer's own device
        problem = None
        if _crashed(operation, response.status_code):
            problem = f"{response.status_code}: {response.text[:300]}"
        else:
            try:
                case.validate_response(response, checks=CHECKS, headers=owner.headers())
            except (Failure, FailureGroup) as exc:
                problem = " / ".join(
                    str(e).strip().replace("\n", " ")[:400]
                    for e in getattr(exc, "exceptions", [exc])
                )
        if problem:
            failures.append(f"{operation.label} [{mode}] {problem}\n    {case.as_curl_command()}")

    try:
        run()
    except hypothesis.errors.Unsatisfiable:
        pass  # nothing of this operation can be made invalid (no parameters, no body)
    return failures


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_operation_answers_a_5xx_or_off_its_schema(fuzz_target, mode):
    server, owner, schema = fuzz_target
    failures = []
    for operation in _operations(schema):
        failures += _fuzz(operation, mode, server, owner)
    assert not failures, "\n".join(failures)
