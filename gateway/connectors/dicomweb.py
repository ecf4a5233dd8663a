"""DICOM_WEB connector: an upstream DICOMweb server (PS3.18) reached with `requests`.

QIDO-RS searches are re-encoded for the upstream and paged with `limit`/`offset` (PS3.18
8.3.4.4); WADO-RS metadata has its BulkDataURIs rewritten to the gateway; WADO-RS instance
retrieval is a pass-through stream, decoded part by part as it arrives (`multipart.iter_parts`).

Each upstream (QIDO-RS, and WADO-RS when its authentication block differs) is one
`http_upstream.Upstream`: a pooled session with the block's credentials (BASIC, NONE, OAUTH2
client credentials), time-outs and error mapping. A search (all its pages) and a metadata
request are also bounded by `timeouts.request`. No message carries a credential, a token, or
the query string (it can hold patient data).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Generator, Iterable, Mapping
from typing import Any
from urllib.parse import quote

from .. import dicomjson, jsoncodec
from ..dicomjson import JsonDataset
from ..errors import ConnectorError, NotAcceptable, NotFound
from ..multipart import iter_parts
from ..query import SERIES_UID, SOP_UID, STUDY_UID, Level, Match, SearchQuery, is_uid
from ..settings import ConnectorSettings, OidcClient
from .base import Capabilities, Part10, ResourceRef, SearchResult
from .http_upstream import Upstream, mapped, part10_of

DICOM_JSON = "application/dicom+json"
#: Characters sent as they are in a query value: Orthanc does not decode `%2A` (testbed.md §0).
QUERY_SAFE = "*?,^"
_RETRIEVE_URL = dicomjson.key(0x00081190)
_STUDY, _SERIES, _SOP = (dicomjson.key(t) for t in (STUDY_UID, SERIES_UID, SOP_UID))
_LEVEL_PATH = {Level.STUDY: "studies", Level.SERIES: "series", Level.IMAGE: "instances"}


def encode_query(pairs: Iterable[tuple[str, str]]) -> str:
    """A query string whose values keep `*`, `?`, `,` and `^` literal (PS3.18 8.3.4.1 allows
    them; Orthanc 1.10 does not percent-decode). urllib3 still escapes `^` on the wire."""
    return "&".join(f"{quote(k, safe='')}={quote(v, safe=QUERY_SAFE)}" for k, v in pairs)


def match_value(match: Match) -> str:
    """A matching key's value in QIDO-RS syntax (PS3.18 8.3.4.1; PS3.4 C.2.2.2)."""
    if match.kind == "range":
        return f"{match.values[0]}-{match.values[1]}"
    if match.kind == "universal":
        return ""
    return ",".join(match.values)


def search_path(query: SearchQuery) -> tuple[str, tuple[int, ...]]:
    """The QIDO-RS resource for `query` (PS3.18 10.6.1): scoped under the study (and series)
    when the query names exactly one, and the UID tags the path already carries."""
    study = query.match(STUDY_UID)
    series = query.match(SERIES_UID)
    if query.level is Level.STUDY or study is None or study.kind != "single":
        return _LEVEL_PATH[query.level], ()
    prefix = f"studies/{study.values[0]}"
    if query.level is Level.IMAGE and series is not None and series.kind == "single":
        return f"{prefix}/series/{series.values[0]}/instances", (STUDY_UID, SERIES_UID)
    return f"{prefix}/{_LEVEL_PATH[query.level]}", (STUDY_UID,)


def search_pairs(query: SearchQuery, in_path: tuple[int, ...]) -> list[tuple[str, str]]:
    """Matching keys by keyword, includefield and fuzzymatching (PS3.18 8.3.4)."""
    pairs = [(m.keyword, match_value(m)) for m in query.matches if m.tag not in in_path]
    if query.include_all:
        pairs.append(("includefield", "all"))
    if query.includefields:
        pairs.append(("includefield", ",".join(dicomjson.key(t) for t in query.includefields)))
    if query.fuzzy:
        pairs.append(("fuzzymatching", "true"))
    return pairs


def resource_path(ref: ResourceRef) -> str:
    """The WADO-RS resource of a study, series or instance (PS3.18 10.4.1)."""
    levels = (("studies", ref.study), ("series", ref.series), ("instances", ref.instance))
    return "/".join(f"{name}/{uid}" for name, uid in levels if uid)


def _bulk_for(
    data: Mapping[str, Any], base: str, ref: ResourceRef
) -> Callable[[tuple[str, ...]], str]:
    """The gateway's BulkDataURI for each bulk element of `data` (PS3.18 F.2.6), by tag path,
    for `dicomjson.normalise`: under the instance's own UIDs (keys as the upstream spelled
    them, upper or lower case), or the reference's where they are missing."""

    def uid(key: str, default: str | None) -> str:
        attr = data.get(key) or data.get(key.lower())
        value = attr.get("Value") if isinstance(attr, Mapping) else None
        found = value[0] if isinstance(value, list) and value else None
        # an invalid one leaves the dataset to the engine, which drops it: never in a URL
        return found if isinstance(found, str) and is_uid(found) else (default or "")

    uids = (uid(_STUDY, ref.study), uid(_SERIES, ref.series), uid(_SOP, ref.instance))
    return functools.partial(dicomjson.bulk_uri, base, *uids)


class DicomWebConnector:
    """The Connector protocol over an upstream DICOMweb server."""

    def __init__(self, settings: ConnectorSettings, oidc: Callable[[str], OidcClient]) -> None:
        web = settings.dicom_web
        if web is None:
            raise ValueError(f"connector {settings.id} has no dicom-web-connector block")
        self.id = settings.id
        self.capabilities = Capabilities(relational=True, fuzzy=True, uid_lists=True)
        self._timeouts = settings.timeouts
        self._page_size = max(1, web.page_size)
        self._qido = Upstream(web.qido_rs, oidc, self.id, settings.timeouts)
        wado = web.wado_rs or web.qido_rs
        same = wado == web.qido_rs
        self._wado = self._qido if same else Upstream(wado, oidc, self.id, settings.timeouts)

    def _deadline(self) -> float:
        return time.monotonic() + self._timeouts.request

    # -- QIDO-RS ---------------------------------------------------------------------------

    def search(self, query: SearchQuery) -> SearchResult:
        """Pages through the upstream until offset + limit answers, an empty page, or a page
        shorter than asked that comes without the upstream's `Warning: 299 ... additional
        results` (PS3.18 8.3.4.4: a server that caps its page size says more remain);
        answers de-duplicated by the level's UID."""
        if any(m.kind == "list" and not m.values for m in query.matches):
            return SearchResult([])
        path, in_path = search_path(query)
        pairs = search_pairs(query, in_path)
        wanted = None if query.limit is None else query.offset + query.limit
        deadline = self._deadline()
        answers: dict[str, JsonDataset] = {}
        offset, more = 0, True
        while more and (wanted is None or len(answers) < wanted):
            asked = self._page_size
            if wanted is not None:
                asked = min(asked, wanted - len(answers))
            paging = [("limit", str(asked)), ("offset", str(offset))]
            page, more_remain = self._search_page(path, pairs + paging, bool(in_path), deadline)
            before = len(answers)
            for data in page:
                uid = dicomjson.uid_of(data, query.level) or f"#{len(answers)}"
                answers.setdefault(uid, data)
            offset += len(page)
            # a page with nothing new means the upstream ignores offset
            full = len(page) == asked or (bool(page) and more_remain)
            more = full and len(answers) > before
        datasets = list(answers.values())
        end = None if query.limit is None else query.offset + query.limit
        return SearchResult(datasets[query.offset : end], complete=not more)

    def _search_page(
        self, path: str, pairs: list[tuple[str, str]], scoped: bool, deadline: float
    ) -> tuple[list[JsonDataset], bool]:
        """One page, and whether the upstream says more results remain."""
        response = self._qido.get(path, encode_query(pairs), DICOM_JSON, deadline, "search", True)
        with response:
            if response.status_code == 204 or (response.status_code == 404 and scoped):
                self._qido.discard(response, deadline, "search")
                return [], False
            self._qido.check_status(response, "search")
            warning = response.headers.get("Warning", "")
            body = self._qido.read_json(response, deadline, "search")
        return self._datasets(body, "search"), "additional result" in warning.lower()

    def _datasets(
        self, body: Any, what: str, bulk: tuple[str, ResourceRef] | None = None
    ) -> list[JsonDataset]:
        """The upstream's DICOM JSON array, normalised; with `bulk` (the gateway's base URL
        and the resource asked for), BulkDataURIs pointed at the gateway."""
        if body is None:
            return []
        if not isinstance(body, list) or not all(isinstance(d, dict) for d in body):
            raise ConnectorError(f"{what}: upstream answer is not a DICOM JSON array", self.id)
        with mapped(self.id, what):
            if bulk is None:
                out = [dicomjson.normalise(d) for d in body]
            else:
                base, ref = bulk
                out = [dicomjson.normalise(d, bulk=_bulk_for(d, base, ref)) for d in body]
        for data in out:
            data.pop(_RETRIEVE_URL, None)
        return out

    # -- WADO-RS ---------------------------------------------------------------------------

    def retrieve_metadata(self, ref: ResourceRef, bulk_base: str) -> list[JsonDataset]:
        """PS3.18 10.4 metadata, BulkDataURIs rewritten to `bulk_base`. Raises NotFound."""
        deadline = self._deadline()
        path = resource_path(ref) + "/metadata"
        response = self._wado.get(path, "", DICOM_JSON, deadline, "metadata", True)
        with response:
            if response.status_code in (204, 404):
                self._wado.discard(response, deadline, "metadata")
                raise NotFound(f"no {ref.level.lower()} with that UID", self.id)
            self._wado.check_status(response, "metadata")
            body = self._wado.read_json(response, deadline, "metadata")
        with jsoncodec.paused_gc():  # many new objects, no cycles: see jsoncodec.loads
            datasets = self._datasets(body, "metadata", (bulk_base.rstrip("/"), ref))
        if not datasets:
            raise NotFound(f"no {ref.level.lower()} with that UID", self.id)
        return datasets

    def retrieve_instances(
        self, ref: ResourceRef, transfer_syntax: str
    ) -> Generator[Part10, None, None]:
        """PS3.18 10.4 instances as `multipart/related; type="application/dicom"`, streamed:
        the request is sent on the first `next()`, which raises NotFound (404) or
        NotAcceptable (406); closing the generator closes the upstream response."""
        accept = f'multipart/related; type="application/dicom"; transfer-syntax={transfer_syntax}'
        # the first part must come within timeouts.request; the rest streams at the client's pace
        first: list[float | None] = [self._deadline()]
        response = self._wado.get(resource_path(ref), "", accept, first[0], "retrieve", stream=True)
        with response:
            if response.status_code in (204, 404, 406):
                self._wado.discard(response, first[0], "retrieve")
            if response.status_code in (204, 404):  # as for metadata: nothing there
                raise NotFound(f"no {ref.level.lower()} with that UID", self.id)
            if response.status_code == 406:
                raise NotAcceptable(
                    f"upstream cannot send transfer syntax {transfer_syntax}", self.id
                )
            self._wado.check_status(response, "retrieve")
            content_type = response.headers.get("Content-Type", "")
            body = self._wado.iter_body(response, lambda: first[0], "retrieve")
            parts = iter_parts(content_type, body)
            while True:
                with mapped(self.id, "retrieve"):
                    part = next(parts, None)
                    if part is None:
                        return
                    item = part10_of(part)
                first[0] = None
                yield item

    def check(self) -> None:
        """Readiness: the QIDO-RS endpoint answers a one-study search."""
        response = self._qido.get(
            "studies", "limit=1", DICOM_JSON, self._deadline(), "readiness check", True
        )
        with response:
            self._qido.check_status(response, "readiness check")

    def close(self) -> None:
        self._qido.close()
        if self._wado is not self._qido:
            self._wado.close()
