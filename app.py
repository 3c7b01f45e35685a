"""Serve the talking avatar: `python app.py` (see `python app.py --help`)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from aiohttp import web

from core.extras import MissingExtraError
from engines.render_pool import PoolUnavailableError
from server.app import create_app, runner_options
from server.config import parse_args
from server.logs import setup_logging


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_args(argv)
    setup_logging(config.log_level, config.log_json)
    shown = "127.0.0.1" if config.host in ("0.0.0.0", "::") else config.host
    url = f"http://{shown}:{config.listenport}/"
    try:
        web.run_app(
            create_app(config),
            host=config.host,
            port=config.listenport,
            **runner_options(config),
            print=lambda _: print(f"Serving on {config.host}:{config.listenport}; open {url} in a browser", flush=True),
        )
    except (MissingExtraError, PoolUnavailableError) as e:  # a part of the install, or the render pool, is missing
        logging.getLogger("app").error("cannot start: %s", e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
