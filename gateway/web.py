"""Request-level plumbing shared by the blueprints: the one error handler, the request log line,
public URLs, connector selection and response helpers."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
import uuid
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from flask import Flask, Response, current_app, g, request
from werkzeug.exceptions import HTTPException

from . import gzipped, jsoncodec
from .connectors.base import ResourceRef
from .errors import BadRequest, GatewayError, NotFound
from .query import check_uid

if TYPE_CHECKING:
    from . import Gateway

log = logging.getLogger("gateway.request")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
#: RFC 9110 7.2 / RFC 3986 3.2.2: a reg-name or an IP literal, and an optional port.
#: a path prefix the gateway's URLs may carry: segments of unreserved characters (RFC 3986)
_PREFIX = re.compile(r"^(/[A-Za-z0-9._~-]+)*/?$")
_HOST = re.compile(r"^([A-Za-z0-9._~-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\])(:[0-9]{1,5})?$")


def gateway() -> Gateway:
    return current_app.extensions["gateway"]  # type: ignore[no-any-return]


def resource_ref(study: str, series: str | None = None, instance: str | None = None) -> ResourceRef:
    """The study, series or instance a WADO-RS path names, its UIDs checked (a 400 naming the
    one that is not a UID) before they reach a connector."""
    check_uid(study, "StudyInstanceUID")
    if series is not None:
        check_uid(series, "SeriesInstanceUID")
    if instance is not None:
        check_uid(instance, "SOPInstanceUID")
    return ResourceRef(study, series, instance)


def connector_ids(connector_id: str | None) -> list[str]:
    """The connectors a request goes to: the one named in the path, or the defaults."""
    gw = gateway()
    if connector_id is None:
        return list(gw.settings.default)
    if connector_id not in gw.engine.backends:
        raise NotFound("no such archive", connector=None)
    return [connector_id]


def public_root() -> str:
    """The gateway's public base URL: configured, or from the request (and, when the config
    trusts a proxy, from its X-Forwarded-* headers, applied by ProxyFix)."""
    configured = gateway().settings.gateway.public_url
    if configured:
        return configured.rstrip("/")
    if not _HOST.match(request.host):
        raise BadRequest("the Host header is not a valid host[:port]", parameter="Host")
    if not _PREFIX.match(request.script_root):  # X-Forwarded-Prefix, when a proxy is trusted
        raise BadRequest("the path prefix is not a plain path", parameter="X-Forwarded-Prefix")
    try:
        return request.url_root.rstrip("/")
    except ValueError as exc:  # werkzeug refuses a port out of range
        raise BadRequest("the Host header is not a valid host[:port]", parameter="Host") from exc


def dicomweb_base(connector_id: str | None) -> str:
    root = public_root()
    return f"{root}/archives/{connector_id}/dicomweb" if connector_id else f"{root}/dicomweb"


def warning_values(texts: Iterable[str]) -> list[str]:
    """RFC 7234 5.5 Warning values with code 299 (PS3.18 8.4.2 uses them for partial answers)."""
    values = []
    for text in texts:
        clean = text.replace("\\", "\\\\").replace('"', '\\"')
        values.append(f'299 gateway "{clean}"')
    return values


#: JSON bodies smaller than this are sent as they are (gzip would gain little)
GZIP_FROM = 1024


def accept() -> str | None:
    """What the client accepts: the `accept` query parameter when present (PS3.18 8.3.3.1:
    for links that cannot set a header), else the Accept header field."""
    if "accept" in request.args:
        return request.args.get("accept")
    return request.headers.get("Accept")


def json_response(body: Any, mimetype: str, warnings: Sequence[str] = ()) -> Response:
    """A JSON answer with an ETag (RFC 9110 8.8.3: a hash of the body, one per content
    coding), a 304 when `If-None-Match` names it (RFC 9110 13.1.2), and gzip when the client
    accepts it."""
    data = jsoncodec.dumps(body)
    tag = hashlib.sha256(data).hexdigest()[:32]
    response = Response(mimetype=mimetype)
    response.vary.add("Accept-Encoding")
    if len(data) >= GZIP_FROM and request.accept_encodings["gzip"]:
        response.set_data(gzipped.compress(data))
        response.headers["Content-Encoding"] = "gzip"
        tag += "-gzip"
    else:
        response.set_data(data)
    response.set_etag(tag)
    for value in warning_values(warnings):
        response.headers.add("Warning", value)
    response.make_conditional(request)
    # freed once the answer is sent, not before: the objects of a large answer (a series'
    # metadata) take tens of milliseconds to free
    held = [body]
    response.call_on_close(held.clear)
    return response


def _error_response(
    status: int, body: dict[str, object], headers: Iterable[tuple[str, str]] = ()
) -> Response:
    response = Response(json.dumps(body), status=status, mimetype="application/json")
    for name, value in headers:
        if name.lower() not in ("content-type", "content-length"):
            response.headers.add(name, value)
    return response


def install(app: Flask) -> None:
    """Registers the one error handler and the per-request log line."""

    @app.errorhandler(GatewayError)
    def _gateway_error(exc: GatewayError) -> Response:
        if exc.connector is not None:
            for name in exc.connector.split(", "):
                gateway().metrics.connector_failed(name, exc.status)
        return _error_response(exc.status, exc.to_json(), exc.headers)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        body: dict[str, object] = {"status": status, "error": exc.description or exc.name}
        return _error_response(status, body, exc.get_headers())  # keeps Allow on a 405

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        log.exception("request %s failed", getattr(g, "request_id", "-"))
        return _error_response(500, {"status": 500, "error": "internal error"})

    @app.before_request
    def _start() -> None:
        given = request.headers.get("X-Request-Id", "")
        g.request_id = given if _REQUEST_ID.match(given) else uuid.uuid4().hex
        g.started = time.monotonic()

    @app.after_request
    def _finish(response: Response) -> Response:
        response.headers["X-Request-Id"] = g.get("request_id", "-")
        elapsed = (time.monotonic() - g.get("started", time.monotonic())) * 1000
        rule = request.url_rule.rule if request.url_rule else "-"  # no UIDs, no query string
        gateway().metrics.observe(rule, request.method, response.status_code, elapsed / 1000)
        log.info(
            "%s %s %s %d %.1fms",
            g.get("request_id", "-"),
            request.method,
            rule,
            response.status_code,
            elapsed,
        )
        return response
