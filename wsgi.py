"""WSGI entry point: `gunicorn wsgi:app` (worker settings in gunicorn.conf.py)."""

from gateway import create_app

app = create_app()
