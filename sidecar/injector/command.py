"""`hexarch injector --listen ADDR --tls-cert FILE --tls-key FILE [--config FILE]`."""

from __future__ import annotations

import argparse
import logging
import ssl
import sys
from typing import Any


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "injector",
        help="run the Kubernetes admission webhook that injects the sidecar into pods",
        description="Serve AdmissionReview v1 over HTTPS at /mutate (pods annotated hexarch.io/inject: "
        '"true") and /mutate/namespace-enabled (pods in namespaces labelled hexarch.io/inject=enabled).',
    )
    parser.add_argument(
        "--listen", required=True, metavar="HOST:PORT", help="listen address, e.g. 0.0.0.0:8443"
    )
    parser.add_argument(
        "--tls-cert", required=True, metavar="FILE", help="PEM certificate (reloaded on change)"
    )
    parser.add_argument(
        "--tls-key", required=True, metavar="FILE", help="PEM private key (reloaded on change)"
    )
    parser.add_argument(
        "--config", metavar="FILE", help="injector config YAML (docs/kubernetes.md lists the keys)"
    )
    parser.add_argument("--log-level", default="info", help="debug, info, warning (default info)")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from aiohttp import web

    from sidecar.injector.config import load_config
    from sidecar.injector.errors import ConfigError
    from sidecar.injector.server import InjectorSettings, create_app
    from sidecar.settings import parse_listen

    logging.basicConfig(
        level=logging.getLevelNamesMapping().get(args.log_level.upper(), logging.INFO), format="%(message)s"
    )
    listen = parse_listen(args.listen)
    if listen is None:
        print(f"hexarch injector: --listen '{args.listen}' is not host:port", file=sys.stderr)
        return 2
    try:
        config = load_config(args.config)
        settings = InjectorSettings(listen[0], listen[1], args.tls_cert, args.tls_key, config)
        app = create_app(settings)
    except ConfigError as exc:
        print(f"hexarch injector: {exc}", file=sys.stderr)
        return 1
    except (OSError, ssl.SSLError) as exc:
        print(f"hexarch injector: cannot load TLS certificate/key: {exc}", file=sys.stderr)
        return 1
    from sidecar.injector.server import CERTS_KEY

    logging.getLogger("hexarch.injector").info("hexarch injector on https://%s:%d", listen[0], listen[1])
    try:
        web.run_app(
            app,
            host=listen[0],
            port=listen[1],
            ssl_context=app[CERTS_KEY].context,
            print=None,
            access_log=None,
            shutdown_timeout=5,
        )
    except OSError as exc:
        print(f"hexarch injector: cannot listen on {args.listen}: {exc}", file=sys.stderr)
        return 1
    return 0
