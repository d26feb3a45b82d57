# One image for every natsflow service; the command picks the service:
#   docker run natsflow orchestrator | gateway | worker MODULE:OBJ
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    UV_LINK_MODE=copy \
    UV_COMPILE_BYTECODE=1 \
    UV_PROJECT_ENVIRONMENT=/app/.venv

RUN pip install --no-cache-dir uv

WORKDIR /app

# Dependencies first, so that code changes do not reinstall them.
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --frozen --no-dev --no-install-project

COPY contracts ./contracts
COPY transport ./transport
COPY orchestrator ./orchestrator
COPY gateway ./gateway
COPY natsflow ./natsflow
RUN uv sync --frozen --no-dev

ENV PATH="/app/.venv/bin:$PATH"
RUN useradd --create-home natsflow
USER natsflow

EXPOSE 8000
ENTRYPOINT ["natsflow"]
CMD ["--help"]
