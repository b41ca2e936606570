"""The server's own log lines (``ivrs serve``, its background jobs): stderr, like
gunicorn's, one line each, stamped in UTC with the zone said, whatever the
host's clock is set to, so that lines from several hosts sort together."""

from __future__ import annotations

import logging
import sys
import time

FORMAT = "%(asctime)s.%(msecs)03dZ [%(process)d] %(levelname)s %(name)s: %(message)s"
DATE_FORMAT = "%Y-%m-%dT%H:%M:%S"


def configure_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    formatter = logging.Formatter(FORMAT, DATE_FORMAT)
    formatter.converter = time.gmtime
    handler.setFormatter(formatter)
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    # The dialog library logs every callback it runs, several lines a keypress.
    logging.getLogger("transitions").setLevel(logging.WARNING)
