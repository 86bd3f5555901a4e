"""schemathesis against the served OpenAPI document: no 500, no answer that breaks the schema.

The number of examples per operation is bounded (``TASKD_SCHEMATHESIS_EXAMPLES``, default 25)
so that the run stays well under a minute.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from taskd.api import RunningApi, mint_token
from taskd.settings import Settings
from tests.integration.api_support import (
    Client,
    put_account,
)

EXAMPLES = int(os.environ.get("TASKD_SCHEMATHESIS_EXAMPLES", "25"))
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance, negative_data_rejection]


@pytest.mark.slow
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_500_and_every_answer_matches_the_schema(
    api: RunningApi, api_settings: Settings, client: Client, mode: GenerationMode
) -> None:
    # A member with quota, so that valid creates get through to the database too; an admin
    # token reaches every endpoint, and the fuzzer's own id makes some tasks its own.
    put_account(client, "fuzzer", quota=1_000_000)
    client("fuzzer").post("/v1/tasks", json={"kind": "noop", "subtasks": [{"n": 1}]})
    token = mint_token(api_settings.api, "fuzzer", admin=True, ttl=600)
    loaded = schemathesis.openapi.from_url(f"{api.url}/openapi.json")
    operations = [result.ok() for result in loaded.get_all_operations()]
    assert len(operations) >= 9
    calls = 0
    unsatisfiable: list[str] = []
    for operation in operations:

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def check(case: Any) -> None:
            nonlocal calls
            calls += 1
            case.call_and_validate(base_url=api.url,
                                   headers={"Authorization": f"Bearer {token}"},
                                   checks=CHECKS)

        try:
            check()
        except Unsatisfiable:
            # Nothing to make invalid (GET /healthz, GET /v1/status take no input).
            assert mode is GenerationMode.NEGATIVE, operation.label
            unsatisfiable.append(operation.label)
    assert len(unsatisfiable) <= 2, unsatisfiable
    assert calls >= len(operations) - len(unsatisfiable)
