"""natsflow's HTTP gateway (FastAPI): REST and RFC 9457 problems over the NATS API.

    from gateway import create_app, serve

    app = create_app(NatsSettings.from_env())          # ASGI app, e.g. for uvicorn
    app = create_app(settings, auth=None)              # the same without API keys
    await serve(NatsSettings.from_env(), port=8000)    # or run it in this event loop
"""

from ._auth import ROUTE_SCOPES, Principal, current_principal
from .app import KEYS, Accepted, Health, KeyAuth, create_app, serve

__all__ = ["create_app", "serve", "Accepted", "Health", "KEYS", "KeyAuth", "Principal",
           "ROUTE_SCOPES", "current_principal"]
