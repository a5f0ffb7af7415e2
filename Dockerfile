# The sidecar image: the hexarch command (compiler + sidecar) and the Rego library.
# OPA and Redis run as their own containers (docker-compose.yml) or as pod sidecars (helm/).
FROM python:3.11-slim

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
