"""Build the redis.asyncio client the counters use: short timeouts, a bounded pool, no slow retries.

redis-py's default retries a failed command 10 times with backoff up to 1 s; a sidecar on the hot
path must instead fail in well under a second and let the fail mode decide. One immediate retry on
a broken connection is kept: after a Redis restart every pooled connection is dead once, and the
scripts are safe to resend (admit.lua is idempotent per reservation, settle.lua deletes its record).

URLs: ``redis://[user:pass@]host:port/db`` (or ``rediss://``, ``unix://``) for one server;
``redis+cluster://host:port[,host:port...]`` (or ``rediss+cluster://``), or a list of several
``redis://host:port`` URLs, for Redis Cluster (db must be 0 there).
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

# Timeouts are asyncio timers: under a burst the event loop itself can lag a few hundred ms, so going
# much lower turns load spikes into false "Redis down" answers. A stopped Redis is refused at once.
DEFAULT_SOCKET_TIMEOUT = 0.5
DEFAULT_CONNECT_TIMEOUT = 0.5
# Each script holds a connection for well under a millisecond: a small pool serves thousands of
# requests a second, and a burst waits for a free connection instead of opening dozens at once.
DEFAULT_MAX_CONNECTIONS = 16
DEFAULT_POOL_TIMEOUT = 1.0
# redis-py's cluster client has no waiting pool: past the cap it fails at once, so per node it gets
# room for a whole burst instead.
CLUSTER_CONNECTIONS_PER_NODE_FACTOR = 16
_CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}


def _retry() -> Retry:
    # one immediate retry on a dropped connection, never on a timeout (that would double the wait)
    return Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))


def create_redis(
    url: str | Sequence[str],
    *,
    socket_timeout: float = DEFAULT_SOCKET_TIMEOUT,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    pool_timeout: float = DEFAULT_POOL_TIMEOUT,
) -> Redis | RedisCluster:
    """A client for `url`; nothing connects until the first command."""
    urls = [url] if isinstance(url, str) else list(url)
    if not urls:
        raise ValueError("no Redis URL given")
    scheme = urlsplit(urls[0]).scheme
    if len(urls) > 1 or scheme in _CLUSTER_SCHEMES:
        return _cluster(urls, socket_timeout, connect_timeout, max_connections)
    pool = BlockingConnectionPool.from_url(
        urls[0],
        max_connections=max_connections,
        timeout=pool_timeout,
        socket_timeout=socket_timeout,
        socket_connect_timeout=connect_timeout,
        retry=_retry(),
        retry_on_timeout=False,
        driver_info=None,  # no CLIENT SETINFO round trip on every new connection
    )
    return Redis.from_pool(pool)


def _cluster(
    urls: list[str], socket_timeout: float, connect_timeout: float, max_connections: int
) -> RedisCluster:
    nodes: list[ClusterNode] = []
    first = urlsplit(urls[0])
    for raw in urls:
        parts = urlsplit(raw)
        for netloc in parts.netloc.rsplit("@", 1)[-1].split(","):
            host, _, port = netloc.rpartition(":")
            if not host:
                raise ValueError(f"Redis Cluster address {netloc!r} in {raw!r} needs host:port")
            nodes.append(ClusterNode(host.strip("[]"), int(port)))
    scheme = _CLUSTER_SCHEMES.get(first.scheme, first.scheme)
    return RedisCluster(
        startup_nodes=nodes,
        username=first.username,
        password=first.password,
        ssl=scheme == "rediss",
        socket_timeout=socket_timeout,
        socket_connect_timeout=connect_timeout,
        max_connections=max_connections * CLUSTER_CONNECTIONS_PER_NODE_FACTOR,
        retry=_retry(),
        driver_info=None,
    )


def redact(url: str) -> str:
    """`url` without its password, for logs and errors."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))
