"""WADO-RS rendered and thumbnail resources (PS3.18 10.4) at study, series, instance and frame
level. The pipeline and its choices are in `gateway.rendering`."""

from __future__ import annotations

from flask import Blueprint, Response, request

from .. import rendering
from ..connectors.base import ResourceRef
from ..web import accept, connector_ids, gateway, resource_ref, warning_values

bp = Blueprint("rendered", __name__)


def _render(
    ref: ResourceRef, connector_id: str | None, frame: int, params: rendering.RenderParams
) -> bytes:
    """Renders the first image the archive sends for `ref`; the stream is closed after it."""
    return gateway().engine.retrieve_with(
        ref,
        connector_ids(connector_id),
        lambda stream: rendering.render_first((part.data for part in stream), frame, params),
    )


def retrieve_rendered(
    study: str,
    series: str | None = None,
    instance: str | None = None,
    frames: str | None = None,
    connector_id: str | None = None,
    thumbnail: bool = False,
) -> Response:
    """Retrieve Rendered / Thumbnail: image/jpeg by default, image/png or image/gif on request."""
    media_type = rendering.negotiate(accept())
    params = rendering.parse_params(request.args.to_dict(), media_type, thumbnail)
    frame = rendering.parse_frame(frames)
    image = _render(resource_ref(study, series, instance), connector_id, frame, params)
    response = Response(image, content_type=media_type)
    ignored = [f"parameter {name} is not supported and was ignored" for name in params.ignored]
    for value in warning_values(ignored):
        response.headers.add("Warning", value)
    return response


_RESOURCES = (
    ("/studies/<study>", "study"),
    ("/studies/<study>/series/<series>", "series"),
    ("/studies/<study>/series/<series>/instances/<instance>", "instance"),
    ("/studies/<study>/series/<series>/instances/<instance>/frames/<frames>", "frame"),
)
for _rule, _name in _RESOURCES:
    for _kind in ("rendered", "thumbnail"):
        bp.add_url_rule(
            f"{_rule}/{_kind}",
            f"retrieve_{_name}_{_kind}",
            retrieve_rendered,
            defaults={"thumbnail": _kind == "thumbnail"},
            methods=["GET"],
            strict_slashes=False,
        )
