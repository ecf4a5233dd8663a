"""WADO-URI (PS3.18 chapter 9, the URI Service) at `/wado` (the default connectors) and
`/archives/<connector_id>/wado` (one connector). The parameters and the representations are
`gateway.wado_uri`'s; the object comes from the engine as stored, like any retrieval."""

from __future__ import annotations

from collections.abc import Sequence

from flask import Blueprint, Response, request

from .. import wado_uri
from ..connectors.base import ResourceRef
from ..dicomjson import first
from ..errors import AllConnectorsFailed, ConnectorError, NotFound
from ..query import SERIES_UID, STUDY_UID, Level, parse_search
from ..web import connector_ids, gateway, warning_values

bp = Blueprint("wado_uri", __name__)


def retrieve(connector_id: str | None = None) -> Response:
    """Retrieve DICOM Instance (PS3.18 9.4) or Retrieve Rendered Instance (9.5)."""
    wado = wado_uri.parse(request.args.items(multi=True))
    ids = connector_ids(connector_id)
    out = gateway().engine.retrieve_with(
        _ref(wado, ids), ids, lambda stream: wado_uri.represent(next(stream), wado)
    )
    response = Response(out.body, content_type=out.media_type)
    for value in warning_values(out.warnings):
        response.headers.add("Warning", value)
    return response


def _ref(wado: wado_uri.WadoRequest, ids: Sequence[str]) -> ResourceRef:
    if wado.study_uid is not None and wado.series_uid is not None:
        return ResourceRef(wado.study_uid, wado.series_uid, wado.object_uid)
    return _locate_instance(wado.object_uid, ids)


def _locate_instance(sop_uid: str, ids: Sequence[str]) -> ResourceRef:
    """The study and series of an instance known by its SOP Instance UID alone (Weasis'
    requireOnlySOPInstanceUID): an IMAGE-level search, connector by connector in order, as
    `Engine.locate` picks the first that holds it. NotFound when none does; when some failed
    and none holds it, their errors."""
    query = parse_search(Level.IMAGE, [("SOPInstanceUID", sop_uid)], max_results=1)
    failed: list[ConnectorError] = []
    for cid in ids:
        try:
            answer = gateway().engine.search(query, [cid], "")
        except AllConnectorsFailed as exc:
            failed.extend(exc.errors)
            continue
        for data in answer.datasets:
            study, series = first(data, STUDY_UID), first(data, SERIES_UID)
            if isinstance(study, str) and isinstance(series, str):
                return ResourceRef(study, series, sop_uid)
    if failed:
        raise AllConnectorsFailed(failed) if len(failed) > 1 else failed[0]
    raise NotFound("no instance with that objectUID")


bp.add_url_rule("", "retrieve", retrieve, methods=["GET"])
