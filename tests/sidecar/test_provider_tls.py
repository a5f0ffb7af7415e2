"""`ca_file` and `verify_tls`: a provider with its own CA (GigaChat's) is reached over TLS when its
CA is named, refused when it is not, and reached unchecked only when told so. The token exchange
goes through the same TLS settings."""

from __future__ import annotations

import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from sidecar.app import create_app
from sidecar.settings import load_settings
from tests.fakes import gigachat_fake
from tests.fakes.common import REPLY_TOKENS
from tests.sidecar.app_support import flushed_redis_url, policy_opa
from tests.support.servers import OpaServer, RedisServer

DB = 14
POLICY = """
version: 1
policies:
  - id: calls
    rules:
      - resource: "*"
        requests_per_hour: 1000
sidecar:
  anonymous:
    enabled: true
    id: tls
"""
BODY = {"model": "GigaChat", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def opa(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpaServer]:
    yield from policy_opa(POLICY, tmp_path_factory)


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("tls")
    key, crt = tmp / "key.pem", tmp / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(crt),
         "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return crt, key


async def _ask(
    tmp_path: Path, opa: OpaServer, redis_url: str, giga: TestServer, extra: str
) -> tuple[int, Any]:
    base = str(giga.make_url("")).rstrip("/")
    config = tmp_path / "hexarch.yaml"
    config.write_text(
        POLICY
        + f"""
giga:
  base_url: {base}/api/v1
  api: gigachat
  auth_url: {base}/api/v2/oauth
  api_key_env: GIGA
  breaker_failures: 0
{extra}"""
    )
    env = {"GIGA": gigachat_fake.CREDENTIALS}
    settings = load_settings(
        str(config), env=env, overrides={"HEXARCH_REDIS_URL": redis_url, "HEXARCH_OPA_URL": opa.url}
    )
    server = TestServer(create_app(settings, env=env), host="127.0.0.1")
    await server.start_server()
    try:
        url = str(server.make_url("/v1/chat/completions"))
        async with aiohttp.ClientSession() as session, session.post(url, json=BODY) as resp:
            return resp.status, await resp.json()
    finally:
        await server.close()


async def test_ca_file_and_verify_tls(
    tmp_path: Path, opa: OpaServer, redis_server: RedisServer, cert: tuple[Path, Path]
) -> None:
    crt, key = cert
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(crt), str(key))
    giga = TestServer(gigachat_fake.create_app(), host="127.0.0.1")
    await giga.start_server(ssl=context)
    redis_url = flushed_redis_url(redis_server, DB)
    try:
        assert str(giga.make_url("")).startswith("https://")
        # the system CAs do not know this certificate: refused, and said why
        status, body = await _ask(tmp_path, opa, redis_url, giga, "")
        assert status == 502, body
        assert "ertificate" in body["error"]["message"]
        # its CA named: reached, token exchange included
        status, body = await _ask(tmp_path, opa, redis_url, giga, f"  ca_file: {crt}\n")
        assert status == 200, body
        assert body["usage"]["completion_tokens"] == REPLY_TOKENS
        # told not to check
        status, body = await _ask(tmp_path, opa, redis_url, giga, "  verify_tls: false\n")
        assert status == 200, body
    finally:
        await giga.close()
