"""The definitions registry over HTTP: ``/definitions``.

Each route takes the definition's namespace as a ``namespace`` query parameter (default:
the caller's home namespace, see :attr:`~gateway._auth.Principal.home_namespace`);
``GET /definitions`` takes it as a filter.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import FastAPI, Path, Request, Response

from contracts.definitions import Definition, DefinitionInfo, DefinitionList
from contracts.errors import InvalidRequest
from contracts.models import MAX_CONFIG_BYTES
from contracts.namespaces import DEFAULT_NAMESPACE

from ._auth import Caller, namespace_query
from ._bodies import read_body, read_yaml_or_json
from ._link import NatsLink
from ._problems import problem_responses

__all__ = ["add_definition_routes"]

_Name = Annotated[str, Path(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_-]+$",
                            description="Definition name.")]
_JSON = "application/json"
_Namespace = Annotated[str | None, namespace_query(
    "The definition's namespace; default: the API key's, when it is bound to exactly "
    "one, else `default`.")]


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
    async def put_definition(name: _Name, request: Request, caller: Caller,
                             namespace: _Namespace = None) -> Response:
        """Validate a WorkflowConfig (without `id`; JSON or YAML) and store it as the next
        immutable version of `name` in `namespace`. 201 with the new version, or 200 with
        the latest when the config is identical to it. 403 `namespace-forbidden` for a
        namespace the API key is not bound to."""
        raw = await read_body(request, limit=MAX_CONFIG_BYTES)
        data = read_yaml_or_json(raw, request.headers.get("content-type", _JSON))
        if not isinstance(data, dict):
            raise InvalidRequest("a definition is a mapping (a WorkflowConfig without id)")
        reply = await link.client().put_definition(
            name, data, namespace=namespace or caller.home_namespace,
            namespaces=caller.namespace_scope)
        d = reply.definition
        location = str(app.url_path_for("get_definition_version", name=name,
                                        version=str(d.version)))
        if d.namespace != DEFAULT_NAMESPACE:  # whoever follows it finds the same one
            location += f"?namespace={d.namespace}"
        return _json(d, 201 if reply.created else 200, location=location)

    @app.get("/definitions", response_model=DefinitionList, summary="Every definition",
             tags=["definitions"], responses=problem_responses(400, 503))
    async def list_definitions(
        caller: Caller,
        namespace: Annotated[str | None, namespace_query(
            "Only this namespace's; default: every namespace the API key may see.")
        ] = None,
    ) -> Response:
        """Every stored definition with its latest version, by namespace and name."""
        return _json(await link.client().list_definitions(
            namespace=namespace, namespaces=caller.namespace_scope), 200)

    @app.get("/definitions/{name}", response_model=DefinitionInfo,
             summary="A definition: latest version and versions", tags=["definitions"],
             responses=problem_responses(400, 404, 503))
    async def get_definition(name: _Name, caller: Caller,
                             namespace: _Namespace = None) -> Response:
        """The latest version in full and the list of all versions."""
        return _json(await link.client().get_definition(
            name, namespace=namespace or caller.home_namespace,
            namespaces=caller.namespace_scope), 200)

    @app.get("/definitions/{name}/versions/{version}", response_model=Definition,
             summary="One version of a definition", tags=["definitions"],
             responses=problem_responses(400, 404, 503))
    async def get_definition_version(
            name: _Name, version: Annotated[int, Path(ge=1, description="Version.")],
            caller: Caller, namespace: _Namespace = None,
    ) -> Response:
        """One immutable version."""
        return _json(await link.client().get_definition_version(
            name, version, namespace=namespace or caller.home_namespace,
            namespaces=caller.namespace_scope), 200)
