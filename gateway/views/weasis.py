"""Weasis: manifests built from any connector, and the links that launch Weasis on them.

- `GET /weasis/manifest?<launch parameters>`: the manifest, built now.
- `GET /weasis/manifest/<id>`: the manifest a launch stored (404 once expired or unknown).
- `GET /weasis/launch?<launch parameters>[&pro=..&arg=..&cdb=..][&page=html]`: a 302 to
  `weasis://?...` naming a stored manifest; with `page=html`, a page carrying the same link.
- `GET /IHEInvokeImageDisplay?requestType=PATIENT|STUDY&...`: IHE IID, launched the same way.

Manifests are XML (manifest 2.5), or JSON when the Accept header prefers
`application/json`; gzip-compressed when the client accepts gzip."""

from __future__ import annotations

import gzip
from typing import TYPE_CHECKING, Any

from flask import Blueprint, Response, request
from werkzeug.datastructures import Headers

from .. import jsoncodec, manifest
from ..errors import BadRequest, NotAcceptable, NotFound
from ..weasis_request import (
    ManifestRequest,
    launch_page,
    launch_parameters,
    parse_manifest_request,
    weasis_url,
)
from ..web import gateway, public_root

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment

bp = Blueprint("weasis", __name__)

_XML, _JSON = "application/xml", "application/json"


@bp.get("/weasis/manifest", strict_slashes=False)
def build_manifest() -> Response:
    wanted = _arguments()
    return _manifest(parse_manifest_request(wanted))


@bp.get("/weasis/manifest/<ident>", strict_slashes=False)
def stored_manifest(ident: str) -> Response:
    stored = gateway().manifests.get(ident, _principal())
    if stored is None:
        raise NotFound("no such manifest (unknown, or its lifetime is over)")
    return _manifest(ManifestRequest.from_dict(stored))


@bp.get("/weasis/launch", strict_slashes=False)
def launch() -> Response:
    return _launch(iid=False)


@bp.get("/IHEInvokeImageDisplay", strict_slashes=False)
def invoke_image_display() -> Response:
    return _launch(iid=True)


def _launch(iid: bool) -> Response:
    args = _arguments()
    page = args.pop("page", [])
    if page not in ([], ["html"]):
        raise BadRequest("page must be html", parameter="page")
    wanted = parse_manifest_request(args, iid=iid)
    _connectors(wanted)  # an unknown archive is a 400 now, not in Weasis
    pro, arg, cdb = launch_parameters(args)
    ident = gateway().manifests.put(wanted.to_dict(), _principal())
    manifest_url = f"{public_root()}/weasis/manifest/{ident}"
    link = weasis_url(manifest_url, pro, arg, cdb)
    body = launch_page(link, manifest_url)
    if page:
        shown = Response(body, mimetype="text/html")
        shown.headers["Cache-Control"] = "no-store"
        return shown
    response = _SchemeRedirect(body, status=302, mimetype="text/html")
    response.location_value = link
    response.headers["Cache-Control"] = "no-store"
    return response


class _SchemeRedirect(Response):
    """A redirect to a `weasis://?...` link, sent as written: werkzeug normalises Location
    through urlsplit, which drops the empty authority (`weasis:?...`), and some browsers
    launch Weasis only with the `//`."""

    location_value = ""

    def get_wsgi_headers(self, environ: WSGIEnvironment) -> Headers:
        headers = super().get_wsgi_headers(environ)
        headers["Location"] = self.location_value
        return headers


def _manifest(wanted: ManifestRequest) -> Response:
    accept = request.accept_mimetypes
    kind = accept.best_match([_XML, "text/xml", _JSON]) if accept.provided else _XML
    if kind is None:
        raise NotAcceptable("a manifest is application/xml, text/xml or application/json")
    built = gateway().weasis.build(wanted, _connectors(wanted), public_root())
    if kind == _JSON:
        body = jsoncodec.dumps(manifest.to_json(built))
        mimetype = _JSON
    else:
        body, mimetype = manifest.to_xml(built), kind
    response = Response(body, mimetype=mimetype)
    response.headers["Cache-Control"] = "no-store"
    response.vary.update(("Accept", "Accept-Encoding"))
    if request.accept_encodings["gzip"]:
        response.set_data(gzip.compress(body, compresslevel=6))
        response.headers["Content-Encoding"] = "gzip"
    return response


def _connectors(wanted: ManifestRequest) -> list[str]:
    settings = gateway().settings
    known = {c.id for c in settings.connectors}
    for cid in wanted.archives:
        if cid not in known:
            raise BadRequest("archive names no configured connector", parameter="archive")
    return list(wanted.archives) or list(settings.default)


def _arguments() -> dict[str, list[str]]:
    args: dict[str, Any] = request.args.to_dict(flat=False)
    return args


def _principal() -> str | None:
    """Who launched: the authenticated user when a front end or inbound authentication says
    (REMOTE_USER); a stored manifest is then served only to the same user."""
    user = request.environ.get("REMOTE_USER")
    return str(user) if user else None
