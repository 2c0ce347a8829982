# pinecall-bridge: Pinecall webhooks -> CloudEvents -> Kafka. Configured only by BRIDGE_* variables.
#   docker build -t pinecall-bridge .
#   docker run --rm -p 8080:8080 -e BRIDGE_WEBHOOK__SECRETS=... -e BRIDGE_KAFKA__BOOTSTRAP_SERVERS=... pinecall-bridge
# tests/deploy/test_dockerfile.py lints this file (hadolint) and runs the same install path
# (hashed lock -> wheel -> fresh virtualenv -> `pinecall-bridge --help`, `check`) without Docker.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
RUN python -m venv /opt/venv

# Dependencies first, from the lock alone (exact versions, every file's hash checked): edits to
# the source or pyproject.toml do not reinstall them, and the image has what the tests ran
# (`make lock` renews the lock).
COPY requirements.lock ./
RUN /opt/venv/bin/pip install --no-cache-dir --require-hashes -r requirements.lock

# Then the package itself, as a wheel (what a release would publish), without touching the deps.
# Byte-code is compiled here: at run time the root filesystem is read-only.
COPY pyproject.toml README.md ./
COPY bridge/ bridge/
RUN /opt/venv/bin/pip wheel --no-cache-dir --no-deps --wheel-dir /tmp/wheels . \
    && /opt/venv/bin/pip install --no-cache-dir --no-deps /tmp/wheels/*.whl \
    && /opt/venv/bin/pip check \
    && /opt/venv/bin/python -m compileall -q /opt/venv/lib

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="pinecall-bridge" \
      org.opencontainers.image.description="Pinecall webhooks to CloudEvents on Kafka" \
      org.opencontainers.image.licenses="Apache-2.0"
# No .pyc writes (read-only root), logs unbuffered; TMPDIR is the one writable path the chart mounts.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TMPDIR=/tmp
COPY --from=builder /opt/venv /opt/venv
# An empty working directory: the bridge reads an optional .env from here, never from /.
WORKDIR /app
# Numeric, so Kubernetes can verify runAsNonRoot without a passwd entry.
USER 10001:10001
EXPOSE 8080
# The admin port (probes, /metrics) the Helm chart turns on here (config.http.adminPort); the
# bridge's own default leaves it off: set BRIDGE_HTTP__ADMIN_PORT=8081 to serve it.
EXPOSE 8081
# Exec form: no shell at run time; the bridge itself handles SIGTERM (graceful drain).
# `docker run IMAGE check` validates the configuration instead of running.
ENTRYPOINT ["pinecall-bridge"]
CMD ["run"]
