"""WADO-RS: study, series and instance retrieval and metadata (PS3.18 10.4)."""

from __future__ import annotations

from collections.abc import Iterator

from flask import Blueprint, Response

from .. import bulk, transcode
from ..connectors.base import Part10
from ..multipart import encode, new_boundary
from ..negotiation import NATIVE_LITTLE_ENDIAN, negotiate_bulk, negotiate_instances, negotiate_json
from ..web import (
    accept,
    connector_ids,
    dicomweb_base,
    gateway,
    json_response,
    resource_ref,
    warning_values,
)

bp = Blueprint("wado", __name__)
PIXEL_DATA = 0x7FE00010


def _parts(stream: Iterator[Part10]) -> Iterator[tuple[str, bytes]]:
    for part in stream:
        yield f"application/dicom; transfer-syntax={part.transfer_syntax}", part.data


def retrieve(
    study: str,
    series: str | None = None,
    instance: str | None = None,
    connector_id: str | None = None,
) -> Response:
    """Retrieve Study / Series / Instance: multipart/related; type="application/dicom"."""
    transfer_syntax = negotiate_instances(accept())
    ref = resource_ref(study, series, instance)
    engine = gateway().engine
    got = engine.retrieve_study_series_instance(ref, connector_ids(connector_id), transfer_syntax)
    boundary = new_boundary()
    content_type = f'multipart/related; type="application/dicom"; boundary={boundary}'
    response = Response(encode(_parts(got.parts), boundary), content_type=content_type)
    response.call_on_close(got.close)
    if got.partial:
        response.status_code = 206  # PS3.18 8.7: some of the requested instances are missing
        for value in warning_values(got.warnings):
            response.headers.add("Warning", value)
    return response


def metadata(
    study: str,
    series: str | None = None,
    instance: str | None = None,
    connector_id: str | None = None,
) -> Response:
    """Retrieve Study / Series / Instance Metadata as DICOM JSON (PS3.18 10.4.1.1.2)."""
    mimetype = negotiate_json(accept())
    ref = resource_ref(study, series, instance)
    ids = connector_ids(connector_id)
    datasets = gateway().engine.retrieve_metadata(ref, ids, dicomweb_base(connector_id))
    return json_response(datasets, mimetype)


def retrieve_bulkdata(
    study: str, series: str, instance: str, path: str, connector_id: str | None = None
) -> Response:
    """Retrieve Bulkdata (PS3.18 10.4.1.1.4): the value of a BulkDataURI the gateway emitted."""
    asked = negotiate_bulk(accept())
    tag_path = bulk.parse_path(path)
    ref = resource_ref(study, series, instance)

    def value_of(stream: Iterator[Part10]) -> tuple[bytes, str]:
        part = next(stream)
        if tag_path != (PIXEL_DATA,) or asked.transfer_syntax == "*":
            return bulk.extract(part.data, tag_path)
        if part.transfer_syntax not in NATIVE_LITTLE_ENDIAN:  # compressed, or big endian
            part = transcode.deliver(part, asked.transfer_syntax)
        # native little-endian pixel data is the same bytes in either VR encoding
        return bulk.extract(part.data, tag_path)[0], asked.transfer_syntax

    value, syntax = gateway().engine.retrieve_with(ref, connector_ids(connector_id), value_of)
    multipart = asked.multipart
    content_type = f"application/octet-stream; transfer-syntax={syntax}"
    if not multipart:
        return Response(value, content_type="application/octet-stream")
    boundary = new_boundary()
    return Response(
        encode([(content_type, value)], boundary),
        content_type=f'multipart/related; type="application/octet-stream"; boundary={boundary}',
    )


bp.add_url_rule(
    "/studies/<study>/series/<series>/instances/<instance>/bulk/<path:path>",
    "retrieve_bulkdata",
    retrieve_bulkdata,
    methods=["GET"],
)

_RESOURCES = (
    ("/studies/<study>", "study"),
    ("/studies/<study>/series/<series>", "series"),
    ("/studies/<study>/series/<series>/instances/<instance>", "instance"),
)
for _rule, _name in _RESOURCES:
    bp.add_url_rule(_rule, f"retrieve_{_name}", retrieve, methods=["GET"], strict_slashes=False)
    bp.add_url_rule(
        f"{_rule}/metadata",
        f"retrieve_{_name}_metadata",
        metadata,
        methods=["GET"],
        strict_slashes=False,
    )
