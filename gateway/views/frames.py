"""WADO-RS Retrieve Frames (PS3.18 10.4.1.1.3): one part per requested frame, in request
order, as stored or decoded as the Accept header asks (see `negotiation.choose_frames`)."""

from __future__ import annotations

from collections.abc import Iterator

from flask import Blueprint, Response

from .. import frames as pixel_frames
from ..connectors.base import Part10
from ..multipart import encode, new_boundary
from ..negotiation import FrameChoice, choose_frames, frame_ranges
from ..web import accept, connector_ids, gateway, resource_ref

bp = Blueprint("frames", __name__)


def retrieve_frames(
    study: str, series: str, instance: str, frame_list: str, connector_id: str | None = None
) -> Response:
    """GET {root}/studies/{s}/series/{se}/instances/{i}/frames/{list}."""
    numbers = pixel_frames.parse_frame_list(frame_list)
    ranges = frame_ranges(accept(), len(numbers))
    ref = resource_ref(study, series, instance)

    def use(stream: Iterator[Part10]) -> tuple[FrameChoice, Iterator[bytes]]:
        image = pixel_frames.open_image(next(stream).data)
        choice = choose_frames(ranges, image.transfer_syntax, image.can_decode)
        return choice, pixel_frames.frames(image, numbers, choice.decode)

    choice, bodies = gateway().engine.retrieve_lazily_with(ref, connector_ids(connector_id), use)
    return _respond(choice, bodies)


def _respond(choice: FrameChoice, bodies: Iterator[bytes]) -> Response:
    part_type = f"{choice.media_type}; transfer-syntax={choice.transfer_syntax}"
    if not choice.multipart:
        return Response(next(bodies), content_type=part_type)
    boundary = new_boundary()
    content_type = f'multipart/related; type="{choice.media_type}"; boundary={boundary}'
    return Response(encode(((part_type, b) for b in bodies), boundary), content_type=content_type)


bp.add_url_rule(
    "/studies/<study>/series/<series>/instances/<instance>/frames/<frame_list>",
    "retrieve_frames",
    retrieve_frames,
    methods=["GET"],
    strict_slashes=False,
)
