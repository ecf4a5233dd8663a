"""WSGI entry point: `gunicorn wsgi:app` (worker settings in gunicorn.conf.py)."""

import sys

from gateway import create_app
from gateway.config import ConfigError

try:
    app = create_app()
except ConfigError as exc:
    # a clear message, not a traceback; exit status 3 makes gunicorn stop instead of retrying
    print(f"configuration error:\n{exc}", file=sys.stderr)
    sys.exit(3)
