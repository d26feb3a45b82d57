"""The HTTP bodies are the NATS requests without what the URL or the API key says.

No NATS needed: the models and the route table only.
"""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.routing import APIRoute
from pydantic import BaseModel

from contracts.messages import BulkRequest, RerunRequest, RetryRequest
from gateway import create_app
from gateway._bodies import BODY_RULES, BulkBody, RerunBody, RetryBody
from transport.connect import NatsSettings


def _fields(model: type[BaseModel], without: set[str]) -> dict[str, Any]:
    schema = model.model_json_schema()
    return {name: prop for name, prop in schema["properties"].items() if name not in without}


@pytest.mark.parametrize(("body", "request_model", "without"), [
    (RetryBody, RetryRequest, {"id", "namespaces"}),
    (RerunBody, RerunRequest, {"id", "namespaces"}),
    (BulkBody, BulkRequest, {"operation", "namespaces"}),
])
def test_each_body_has_its_requests_fields(body: type[BaseModel],
                                           request_model: type[BaseModel],
                                           without: set[str]) -> None:
    assert _fields(body, set()) == _fields(request_model, without)
    assert body.model_config.get("extra") == "forbid"


def test_every_route_with_a_body_has_a_body_rule_and_no_other() -> None:
    app = create_app(NatsSettings(), auth=None)
    with_body = {(m, r.path) for r in app.routes if isinstance(r, APIRoute)
                 and r.body_field is not None for m in r.methods}
    assert with_body == set(BODY_RULES)


def test_a_route_with_a_body_but_no_rule_cannot_be_added() -> None:
    app = create_app(NatsSettings(), auth=None)
    with pytest.raises(LookupError, match="BODY_RULES"):
        # In ROUTE_SCOPES (it has a scope), but it takes no body today.
        @app.post("/workflows/{workflow_id}/start")
        async def start_with_options(workflow_id: str, body: RetryBody) -> None: ...
