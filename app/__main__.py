"""``python -m app``: run the service with uvicorn, configured from the environment."""

from __future__ import annotations

import logging

import uvicorn

from app.core.config import get_settings
from app.core.server import server_config
from app.main import create_app


def main() -> None:
    settings = get_settings()
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.Server(server_config(create_app(settings), settings)).run()


if __name__ == "__main__":
    main()
