# The sidecar image: the hexarch command (compiler + sidecar) and the Rego library.
# OPA and Redis run as their own containers (docker-compose.yml) or as pod sidecars (helm/).
# The opa binary is copied in too: compiling a policy with custom Rego runs `opa check`, and
# `hexarch test` runs `opa test`. Its version must equal scripts/versions.env (a test checks it).
ARG OPA_VERSION=1.22.2
FROM openpolicyagent/opa:${OPA_VERSION}-static AS opa

FROM python:3.11-slim
COPY --from=opa /opa /usr/local/bin/opa

WORKDIR /app
COPY pyproject.toml README.md ./
COPY compiler ./compiler
COPY sidecar ./sidecar
COPY rego ./rego
COPY examples ./examples
RUN pip install --no-cache-dir .

# The Rego library is not a Python package: point the compiler at it.
ENV HEXARCH_REGO_DIR=/app/rego \
    HEXARCH_LISTEN=0.0.0.0:8080 \
    HEXARCH_POLICY_FILE=/etc/hexarch/hexarch.yaml

USER 65534:65534
EXPOSE 8080
ENTRYPOINT ["hexarch"]
CMD ["serve", "--config", "/etc/hexarch/hexarch.yaml"]
