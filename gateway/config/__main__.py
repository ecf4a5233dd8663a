"""`python -m gateway.config`: loads the configuration that GATEWAY_CONFIG names, as a worker
would, and exits with EXIT_CONFIG and the message when it cannot be used (gunicorn.conf.py runs
it once before any worker starts)."""

from . import ConfigError, exit_with, load_settings

try:
    load_settings()
except ConfigError as exc:
    exit_with(exc)
