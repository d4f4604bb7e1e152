# The gateway's Cloud Run image. Built by cloudbuild.yaml; runs `claude-gateway serve`, which listens on $PORT.

# Exact tag, shared with cloudbuild.yaml's _PYTHON_IMAGE. To pin the digest too, append @sha256:... from
# `docker buildx imagetools inspect python:3.11.14-slim-bookworm`.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv
WORKDIR /src
# The locked versions first (hashes checked), in a layer of their own that only a lock change rebuilds.
COPY requirements/runtime.txt requirements/build.txt ./requirements/
RUN /opt/venv/bin/pip install --require-hashes --no-deps -r requirements/runtime.txt \
 && python -m venv /opt/build \
 && /opt/build/bin/pip install --require-hashes --no-deps -r requirements/build.txt
# Only what the wheel is built from (.dockerignore allows nothing else into the context). The locked build backend
# builds it, and nothing beyond the lock is installed.
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY local_shim ./local_shim
RUN /opt/build/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /tmp/wheel . \
 && /opt/venv/bin/pip install --no-deps /tmp/wheel/*.whl

FROM ${PYTHON_IMAGE}
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PORT=8080
RUN groupadd --system --gid 10001 gateway \
 && useradd --system --uid 10001 --gid gateway --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin gateway
COPY --from=build /opt/venv /opt/venv
WORKDIR /tmp
USER 10001:10001
EXPOSE 8080
# Cloud Run ignores HEALTHCHECK (it uses the probes in terraform/cloud_run.tf); this is for `docker run` locally.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '8080'), timeout=3)"]
# Exec form: the gateway is PID 1 and receives Cloud Run's SIGTERM itself, so it can flush the audit queue in
# the 10 s Cloud Run allows before SIGKILL.
STOPSIGNAL SIGTERM
ENTRYPOINT ["claude-gateway", "serve"]
