"""Administration: `POST /admin/cache/purge[?connector=<id>]` empties the metadata cache (of one
connector, or of all), so that an archive change is visible at once instead of when its
entries expire. It needs `Authorization: Bearer <gateway.cache.admin-token>`; without that key
in the config the route does not exist (404)."""

from __future__ import annotations

import hmac

from flask import Blueprint, Response, request

from ..cache import CachedConnector
from ..errors import BadRequest, NotFound, Unauthorized
from ..web import gateway, json_response

bp = Blueprint("admin", __name__)


@bp.post("/admin/cache/purge", strict_slashes=False)
def purge_cache() -> Response:
    gw = gateway()
    token = gw.settings.gateway.cache.admin_token
    if not token:
        raise NotFound("no such route (gateway.cache.admin-token is not set)")
    given = request.headers.get("Authorization", "")
    if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
        raise Unauthorized("the admin token is missing or wrong")
    wanted = request.args.get("connector")
    backends = gw.engine.backends
    if wanted is not None and wanted not in backends:
        raise BadRequest("connector names no configured connector", parameter="connector")
    purged = {
        cid: b.connector.purge()
        for cid, b in backends.items()
        if isinstance(b.connector, CachedConnector) and wanted in (None, cid)
    }
    return json_response({"purged": purged}, "application/json")
