# syntax=docker/dockerfile:1
# One image for every Python service of the stack (backend, Celery worker, Telegram bot,
# migrations, Directus provisioning); the compose files pick the subcommand:
#   docker run IMAGE serve | worker | bot | migrate | admin --provision-only URL

ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

# --- build: a virtualenv with the package and its pinned runtime dependencies ----------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
WORKDIR /src
# constraints.txt pins every dependency (direct and transitive) to one version: it is the lock
# file, so two builds of the same commit install the same code. The test extra is not installed.
COPY pyproject.toml constraints.txt ./
COPY src ./src
RUN /opt/venv/bin/pip install --constraint constraints.txt /src \
    && /opt/venv/bin/pip check

# --- runtime: the virtualenv only, run as an unprivileged user -------------------------------
FROM ${PYTHON_IMAGE} AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOST=0.0.0.0 \
    PORT=8080 \
    DATA_DIR=/data \
    LOG_FORMAT=json
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /data --no-create-home app \
    && mkdir /data \
    && chown app:app /data
COPY --from=build /opt/venv /opt/venv
WORKDIR /data
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["llm-bot-core"]
CMD ["serve"]
