# syntax=docker/dockerfile:1
# refold-dispatch worker image: `docker compose up` runs it as the worker (default command), as Flower, and,
# under the dev profile, as the sandbox. No secrets are baked in: settings come from the environment at run time.
FROM python:3.11-slim

# uv, pinned to the version that wrote uv.lock, copied from its official image.
COPY --from=ghcr.io/astral-sh/uv:0.13.9 /uv /uvx /bin/

# Bytecode compiled at build time (faster worker start); copy, not hard-link, from uv's cache mount; the venv
# outside the source tree; unbuffered output so `docker logs` sees every line as it is written.
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PROJECT_ENVIRONMENT=/opt/venv \
    PYTHONUNBUFFERED=1 \
    PATH="/opt/venv/bin:$PATH"

WORKDIR /app

# Dependencies first, in their own layer: editing the source does not reinstall them.
COPY pyproject.toml uv.lock README.md ./
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --locked --no-dev --extra flower --extra sandbox --no-install-project

COPY src ./src
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --locked --no-dev --extra flower --extra sandbox --no-editable

# A worker has no business running as root.
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin refold
USER refold

# Celery's warm shutdown on SIGTERM (Docker's default stop signal): the job in hand finishes first. The
# `worker` command execs Celery, so Celery itself is PID 1 and receives the signal.
CMD ["refold-dispatch", "worker"]
