"""QIDO-RS: the six search resources (PS3.18 10.6), merged or for one archive."""

from __future__ import annotations

from flask import Blueprint, Response, request

from ..negotiation import negotiate_json
from ..query import SERIES_UID, STUDY_UID, Level, parse_search
from ..web import accept, connector_ids, dicomweb_base, gateway, json_response

bp = Blueprint("qido", __name__)

_ROUTES = (
    ("/studies", Level.STUDY, "search_for_studies"),
    ("/studies/<study>/series", Level.SERIES, "search_for_study_series"),
    ("/series", Level.SERIES, "search_for_series"),
    ("/studies/<study>/series/<series>/instances", Level.IMAGE, "search_for_series_instances"),
    ("/studies/<study>/instances", Level.IMAGE, "search_for_study_instances"),
    ("/instances", Level.IMAGE, "search_for_instances"),
)


def search(
    level: Level,
    connector_id: str | None = None,
    study: str | None = None,
    series: str | None = None,
) -> Response:
    mimetype = negotiate_json(accept())
    ids = connector_ids(connector_id)
    path_uids = {t: u for t, u in ((STUDY_UID, study), (SERIES_UID, series)) if u is not None}
    gw = gateway()
    query = parse_search(level, request.args.items(multi=True), path_uids, gw.max_results)
    answer = gw.engine.search(query, ids, dicomweb_base(connector_id))
    return json_response(answer.datasets, mimetype, answer.warnings)


for _rule, _level, _name in _ROUTES:
    bp.add_url_rule(
        _rule, _name, search, defaults={"level": _level}, methods=["GET"], strict_slashes=False
    )
