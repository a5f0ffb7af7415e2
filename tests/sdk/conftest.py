from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.stack_support import OPS_KEY, Stack, environ, running_stack
from tests.support.servers import RedisServer

DB = 12


@pytest.fixture(scope="package")
def stack(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(redis_server, DB, tmp_path_factory.mktemp("sdk")) as running:
        yield running


@pytest.fixture
def sidecar(stack: Stack) -> Iterator[Stack]:
    """A fresh count for each test; HEXARCH_URL/HEXARCH_API_KEY point at the first sidecar as ops-bot."""
    stack.flush()
    with environ(HEXARCH_URL=stack.url, HEXARCH_API_KEY=OPS_KEY):
        yield stack
