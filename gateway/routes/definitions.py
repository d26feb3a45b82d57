"""``/definitions``: the definitions registry (named, versioned workflow configs).

Each route takes the definition's namespace as a ``namespace`` query parameter (default:
the caller's home namespace, see :attr:`~gateway._auth.Principal.home_namespace`);
``GET /definitions`` takes it as a filter.
"""

from __future__ import annotations

from typing import Annotated, Any, Final

from fastapi import APIRouter, Body, Path, Request, Response
from pydantic import WithJsonSchema

from contracts.definitions import Definition, DefinitionInfo, DefinitionList

from .._auth import Caller, namespace_query
from .._deps import Namespaces, Nats
from .._problems import problem_responses
from ._answers import in_namespace, json_response

__all__ = ["router"]

router = APIRouter(tags=["definitions"])

_Name = Annotated[str, Path(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_-]+$",
                            description="Definition name.")]
_Namespace = Annotated[str | None, namespace_query(
    "The definition's namespace; default: the API key's, when it is bound to exactly "
    "one, else `default`.")]
# A mapping, checked by the registry (as a WorkflowConfig without id), which names each
# wrong field; documented as the WorkflowConfig it must be.
_Config = Annotated[dict[str, Any], WithJsonSchema(
    {"$ref": "#/components/schemas/WorkflowConfig"}), Body()]
# YAML is decoded before FastAPI sees it (gateway._bodies); its media type is declared
# by hand, as FastAPI's docs do for a content type it does not parse.
_YAML_TOO: Final[dict[str, Any]] = {"requestBody": {"content": {
    "application/yaml": {"schema": {"type": "string"}}}}}


@router.put("/definitions/{name}", status_code=201, response_model=Definition,
            summary="Store a new version of a definition", openapi_extra=_YAML_TOO,
            responses={200: {"model": Definition,
                             "description": "Identical to the latest version: unchanged."},
                       **problem_responses(400, 413, 503)})
async def put_definition(name: _Name, config: _Config,
                         request: Request, nats: Nats, caller: Caller,
                         namespace: _Namespace = None) -> Response:
    """Validate a WorkflowConfig (without `id`; JSON or YAML) and store it as the next
    immutable version of `name` in `namespace`. 201 with the new version, or 200 with
    the latest when the config is identical to it. 403 `namespace-forbidden` for a
    namespace the API key is not bound to."""
    reply = await nats.client().put_definition(
        name, config, namespace=namespace or caller.home_namespace,
        namespaces=caller.namespace_scope)
    d = reply.definition
    location = in_namespace(str(request.app.url_path_for(
        "get_definition_version", name=name, version=str(d.version))), d.namespace)
    return json_response(d, 201 if reply.created else 200, location=location)


@router.get("/definitions", response_model=DefinitionList, summary="Every definition",
            responses=problem_responses(400, 503))
async def list_definitions(
    nats: Nats,
    namespaces: Namespaces,
    namespace: Annotated[str | None, namespace_query(
        "Only this namespace's; default: every namespace the API key may see.")
    ] = None,
) -> Response:
    """Every stored definition with its latest version, by namespace and name."""
    return json_response(await nats.client().list_definitions(
        namespace=namespace, namespaces=namespaces))


@router.get("/definitions/{name}", response_model=DefinitionInfo,
            summary="A definition: latest version and versions",
            responses=problem_responses(400, 404, 503))
async def get_definition(name: _Name, nats: Nats, caller: Caller,
                         namespace: _Namespace = None) -> Response:
    """The latest version in full and the list of all versions."""
    return json_response(await nats.client().get_definition(
        name, namespace=namespace or caller.home_namespace,
        namespaces=caller.namespace_scope))


@router.get("/definitions/{name}/versions/{version}", response_model=Definition,
            summary="One version of a definition", responses=problem_responses(400, 404, 503))
async def get_definition_version(
        name: _Name, version: Annotated[int, Path(ge=1, description="Version.")],
        nats: Nats, caller: Caller, namespace: _Namespace = None,
) -> Response:
    """One immutable version."""
    return json_response(await nats.client().get_definition_version(
        name, version, namespace=namespace or caller.home_namespace,
        namespaces=caller.namespace_scope))
