"""gunicorn settings. Threads, since retrieval responses stream for as long as a study takes."""

import os
import subprocess
import sys

bind = os.environ.get("GATEWAY_BIND", "127.0.0.1:8000")
worker_class = "gthread"
workers = int(os.environ.get("GATEWAY_WORKERS", "2"))
threads = int(os.environ.get("GATEWAY_THREADS", "16"))
timeout = 120  # a worker silent this long is restarted; streaming threads keep it alive
graceful_timeout = 30
keepalive = 5
# A QIDO-RS search by a list of UIDs is one long request line (100 UIDs of 64 characters are
# 6.5 kB): gunicorn's largest bounded limit instead of its default 4094 bytes.
limit_request_line = 8190
# preload_app stays off: each worker builds its connectors and starts the C-MOVE storage SCP
# (or its relay client) after the fork.
preload_app = False
# The gateway decides which forwarded headers to trust (gateway.trust-proxy), not gunicorn.
secure_scheme_headers: dict[str, str] = {}
forwarded_allow_ips = ""
# gunicorn's control socket (for `gunicornc`) only where GATEWAY_CONTROL_SOCKET names a path:
# its default path is one per user, so a second gateway on the host would take it over and
# remove it when it stops.
control_socket = os.environ.get("GATEWAY_CONTROL_SOCKET", "")
control_socket_disable = not control_socket
accesslog = None  # the gateway logs one line per request itself, without query strings
loglevel = os.environ.get("GATEWAY_LOG_LEVEL", "info")
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s"}
    },
    "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "loggers": {
        "gateway": {"level": loglevel.upper(), "handlers": ["stderr"], "propagate": False},
        "gunicorn.error": {"level": "INFO", "handlers": ["stderr"], "propagate": False},
        "pynetdicom": {"level": "WARNING", "handlers": ["stderr"], "propagate": False},
    },
    "root": {"level": "WARNING", "handlers": ["stderr"]},
}


def on_starting(server):
    """The configuration is checked once, before any worker starts: when every worker found it
    wrong on its own, gunicorn could print a traceback of its own after the message. Run in a
    child process (`python -m gateway.config`), so that the master does not import the gateway;
    it exits with 3 (gateway.config.EXIT_CONFIG) when the file cannot be used."""
    if getattr(server.app, "app_uri", None) != "wsgi:app":
        return  # another app with these settings (bench/relay.py)
    if subprocess.run([sys.executable, "-m", "gateway.config"], check=False).returncode == 3:
        sys.exit(3)
