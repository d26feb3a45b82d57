"""natsflow's HTTP gateway (FastAPI): REST and RFC 9457 problems over the NATS API.

    from gateway import create_app, serve

    app = create_app(NatsSettings.from_env())          # ASGI app, e.g. for uvicorn
    await serve(NatsSettings.from_env(), port=8000)    # or run it in this event loop
"""

from .app import Accepted, Health, create_app, serve

__all__ = ["create_app", "serve", "Accepted", "Health"]
