"""Operations: liveness and readiness."""

from __future__ import annotations

import concurrent.futures as cf
import time

from flask import Blueprint, Response

from ..errors import GatewayError
from ..web import gateway, json_response

bp = Blueprint("ops", __name__)


@bp.get("/healthz", strict_slashes=False)
def healthz() -> Response:
    """The process is alive and serving requests."""
    return json_response({"status": "ok"}, "application/json")


@bp.get("/metrics", strict_slashes=False)
def metrics() -> Response:
    """Prometheus text exposition: requests by route and status, latency, connector failures."""
    return Response(gateway().metrics.text(), mimetype="text/plain; version=0.0.4")


@bp.get("/readyz", strict_slashes=False)
def readyz() -> Response:
    """Each connector reachable (C-ECHO, SELECT 1, an upstream QIDO): 200, else 503."""
    backends = gateway().engine.backends
    pool = cf.ThreadPoolExecutor(max_workers=max(1, len(backends)), thread_name_prefix="readyz")
    try:
        futures = {cid: pool.submit(b.connector.check) for cid, b in backends.items()}
        wait = max(b.settings.timeouts.connect for b in backends.values()) + 5
        deadline = time.monotonic() + wait
        states = {cid: _state(f, deadline) for cid, f in futures.items()}
    finally:
        pool.shutdown(wait=False, cancel_futures=True)  # a hung check does not hold the answer
    ready = all(s == "ok" for s in states.values())
    response = json_response({"ready": ready, "connectors": states}, "application/json")
    response.status_code = 200 if ready else 503
    return response


def _state(future: cf.Future[None], deadline: float) -> str:
    try:
        future.result(timeout=max(0.0, deadline - time.monotonic()))
    except cf.TimeoutError:
        return "timed out"
    except GatewayError as exc:
        return exc.message
    except Exception as exc:  # noqa: BLE001 - a check must never break readiness reporting
        return f"error: {type(exc).__name__}"
    return "ok"
