"""The definitions registry over HTTP: ``/definitions``."""

from __future__ import annotations

from typing import Annotated

from fastapi import FastAPI, Path, Request, Response

from contracts.definitions import Definition, DefinitionInfo, DefinitionList
from contracts.errors import InvalidRequest
from contracts.models import MAX_CONFIG_BYTES

from ._bodies import read_body, read_yaml_or_json
from ._link import NatsLink
from ._problems import problem_responses

__all__ = ["add_definition_routes"]

_Name = Annotated[str, Path(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_-]+$",
                            description="Definition name.")]
_JSON = "application/json"


def _json(body: Definition | DefinitionInfo | DefinitionList, status: int, *,
          location: str | None = None) -> Response:
    return Response(body.model_dump_json(), status_code=status, media_type=_JSON,
                    headers={"Location": location} if location else None)


def add_definition_routes(app: FastAPI, link: NatsLink) -> None:
    """Register PUT/GET ``/definitions...`` on ``app``."""

    @app.put("/definitions/{name}", status_code=201, response_model=Definition,
             summary="Store a new version of a definition", tags=["definitions"],
             openapi_extra={"requestBody": {"required": True, "content": {
                 _JSON: {"schema": {"$ref": "#/components/schemas/WorkflowConfig"}},
                 "application/yaml": {"schema": {"type": "string"}}}}},
             responses={200: {"model": Definition,
                              "description": "Identical to the latest version: unchanged."},
                        **problem_responses(400, 413, 503)})
    async def put_definition(name: _Name, request: Request) -> Response:
        """Validate a WorkflowConfig (without `id`; JSON or YAML) and store it as the next
        immutable version of `name`. 201 with the new version, or 200 with the latest when
        the config is identical to it."""
        raw = await read_body(request, limit=MAX_CONFIG_BYTES)
        data = read_yaml_or_json(raw, request.headers.get("content-type", _JSON))
        if not isinstance(data, dict):
            raise InvalidRequest("a definition is a mapping (a WorkflowConfig without id)")
        reply = await link.client().put_definition(name, data)
        d = reply.definition
        location = str(app.url_path_for("get_definition_version", name=name,
                                        version=str(d.version)))
        return _json(d, 201 if reply.created else 200, location=location)

    @app.get("/definitions", response_model=DefinitionList, summary="Every definition",
             tags=["definitions"], responses=problem_responses(503))
    async def list_definitions() -> Response:
        """Every stored definition with its latest version."""
        return _json(await link.client().list_definitions(), 200)

    @app.get("/definitions/{name}", response_model=DefinitionInfo,
             summary="A definition: latest version and versions", tags=["definitions"],
             responses=problem_responses(400, 404, 503))
    async def get_definition(name: _Name) -> Response:
        """The latest version in full and the list of all versions."""
        return _json(await link.client().get_definition(name), 200)

    @app.get("/definitions/{name}/versions/{version}", response_model=Definition,
             summary="One version of a definition", tags=["definitions"],
             responses=problem_responses(400, 404, 503))
    async def get_definition_version(
            name: _Name, version: Annotated[int, Path(ge=1, description="Version.")]
    ) -> Response:
        """One immutable version."""
        return _json(await link.client().get_definition_version(name, version), 200)
