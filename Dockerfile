# The sidecar image: the hexarch command (compiler, sidecar, injector, demo model), the Rego library
# and the pinned opa. docker-compose.yml runs OPA from this image too; helm/ injects it into pods.
# The opa binary is also needed by the compiler (`opa check` on custom Rego) and `hexarch test`.
# Versions: OPA_VERSION must equal scripts/versions.env (tests/test_versions.py checks it); the
# Python base is an exact tag. Build: docker build -t hexarch:local .   (docs/docker.md)
ARG OPA_VERSION=1.22.2
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM openpolicyagent/opa:${OPA_VERSION}-static AS opa

# Stage 1: build the wheel and install it with its dependencies into a virtualenv.
FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
RUN python -m venv /opt/hexarch
COPY pyproject.toml README.md ./
COPY compiler ./compiler
COPY sidecar ./sidecar
RUN /opt/hexarch/bin/pip install --no-cache-dir --no-compile /src \
    && /opt/hexarch/bin/python -m compileall -q /opt/hexarch/lib

# Stage 2: the runtime, without pip's caches, the sources or a compiler toolchain.
FROM ${PYTHON_IMAGE}
COPY --from=opa /opa /usr/local/bin/opa
COPY --from=build /opt/hexarch /opt/hexarch
COPY rego /opt/hexarch/rego
COPY examples /opt/hexarch/examples

# The Rego library is not a Python package: point the compiler at it. The policy is the file given
# to `serve --config` (no HEXARCH_POLICY_FILE here: it would override that file).
ENV PATH=/opt/hexarch/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    HEXARCH_REGO_DIR=/opt/hexarch/rego \
    HEXARCH_LISTEN=0.0.0.0:8080

# nobody:nogroup; the root filesystem can be mounted read-only (the sidecar writes nothing).
USER 65534:65534
WORKDIR /tmp
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2)"]
ENTRYPOINT ["hexarch"]
CMD ["serve", "--config", "/etc/hexarch/hexarch.yaml"]
