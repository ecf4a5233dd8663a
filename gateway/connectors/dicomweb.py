"""DICOM_WEB connector: an upstream DICOMweb server (PS3.18) reached with `requests`.

QIDO-RS searches are re-encoded for the upstream and paged with `limit`/`offset` (PS3.18
8.3.4.4); WADO-RS metadata has its BulkDataURIs rewritten to the gateway; WADO-RS instance
retrieval is a pass-through stream, decoded part by part as it arrives (`multipart.iter_parts`).

Each upstream (QIDO-RS, and WADO-RS when its authentication block differs) has one pooled
`requests.Session`, built without network I/O. Authentication: BASIC (session credentials),
NONE, or OAUTH2 with the client-credentials grant through authlib's `OAuth2Session`; the token
is cached and renewed `TOKEN_LEEWAY` seconds before it expires. Every request carries
`timeout=(connect, read)`; a search (all its pages) and a metadata request are also bounded by
`timeouts.request`. Failures become `ConnectorError` / `ConnectorTimeout` naming the connector;
no message carries a credential, a token, or the query string (it can hold patient data).
"""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import logging
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from typing import Any
from urllib.parse import quote

import pydicom
import requests
from authlib.common.errors import AuthlibBaseError
from requests.adapters import HTTPAdapter
from requests.auth import AuthBase, HTTPBasicAuth
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.exceptions import ReadTimeoutError

from .. import dicomjson
from ..dicomjson import JsonDataset
from ..errors import ConnectorError, ConnectorTimeout, GatewayError, NotAcceptable, NotFound
from ..multipart import Part, iter_parts, parse_content_type
from ..query import SERIES_UID, SOP_UID, STUDY_UID, Level, Match, SearchQuery
from ..settings import Authentication, ConnectorSettings, OidcClient, Timeouts
from .base import Capabilities, Part10, ResourceRef, SearchResult, boundary

log = logging.getLogger("gateway.connectors.dicomweb")

DICOM_JSON = "application/dicom+json"
#: Renew an OAuth2 token this many seconds before it expires.
TOKEN_LEEWAY = 30
CHUNK_SIZE = 64 * 1024
POOL_SIZE = 16
#: Largest JSON answer (one QIDO page or one metadata request) read into memory.
MAX_JSON_BYTES = 64 * 1024 * 1024
#: Characters sent as they are in a query value: Orthanc does not decode `%2A` (testbed.md §0).
QUERY_SAFE = "*?,^"
_RETRIEVE_URL = dicomjson.key(0x00081190)
_LEVEL_PATH = {Level.STUDY: "studies", Level.SERIES: "series", Level.IMAGE: "instances"}


class _Upstream:
    """One upstream endpoint: its base URL, pooled session, credentials and error mapping."""

    def __init__(
        self,
        auth: Authentication,
        oidc: Callable[[str], OidcClient],
        connector: str,
        timeouts: Timeouts,
    ) -> None:
        self.base = auth.base_url.rstrip("/")
        self.connector = connector
        self._timeouts = timeouts
        self._oauth: Any = None  # authlib's OAuth2Session (the library has no type hints)
        self._renew = False
        self._lock = threading.Lock()
        self._auth: AuthBase | None = None
        if auth.type == "OAUTH2" and auth.oauth2 is not None:
            self._oauth = _oauth_session(oidc, auth.oauth2.oidc_id, timeouts)
            self._auth = self._oauth.token_auth
            self.session: requests.Session = self._oauth
        else:
            self.session = requests.Session()
            if auth.type == "BASIC" and auth.basic is not None:
                self._auth = HTTPBasicAuth(auth.basic.login, auth.basic.password)
        adapter = HTTPAdapter(pool_connections=2, pool_maxsize=POOL_SIZE)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)

    def timeout(self, deadline: float | None, what: str) -> tuple[float, float]:
        """(connect, read) for the next socket operation, shortened to what is left of
        `deadline` (a `time.monotonic()` value)."""
        connect, read = self._timeouts.connect, self._timeouts.read
        if deadline is None:
            return connect, read
        left = deadline - time.monotonic()
        if left <= 0:
            raise ConnectorTimeout(
                f"{what} took longer than {self._timeouts.request:g} s", self.connector
            )
        return min(connect, left), min(read, left)

    def get(
        self,
        path: str,
        query: str,
        accept: str,
        deadline: float | None,
        what: str,
        stream: bool = False,
    ) -> requests.Response:
        """GET base + path + ?query (already encoded). With OAUTH2, a 401 answer is retried
        once with a new token (the upstream may have revoked the cached one)."""
        url = f"{self.base}/{path}" + (f"?{query}" if query else "")
        with mapped(self.connector, what):
            response = self._send(url, accept, deadline, what, stream)
            if response.status_code == 401 and self._oauth is not None:
                response.close()
                self._renew = True
                response = self._send(url, accept, deadline, what, stream)
        log.debug("%s GET /%s -> %s", self.connector, path, response.status_code)
        return response

    def _send(
        self, url: str, accept: str, deadline: float | None, what: str, stream: bool
    ) -> requests.Response:
        self._ensure_token(deadline)
        return self.session.get(
            url,
            headers={"Accept": accept},
            auth=self._auth,
            timeout=self.timeout(deadline, what),
            stream=stream,
        )

    def _ensure_token(self, deadline: float | None) -> None:
        """Fetches a client-credentials token when there is none, when it expires within
        TOKEN_LEEWAY seconds, or after the upstream refused it (RFC 6749 4.4)."""
        if self._oauth is None:
            return
        with self._lock:
            token = self._oauth.token
            if token and not self._renew and not token.is_expired(leeway=TOKEN_LEEWAY):
                return
            timeout = self.timeout(deadline, "OAuth2 token request")
            try:
                self._oauth.fetch_token(timeout=timeout)
            except (requests.Timeout, ReadTimeoutError):
                raise ConnectorTimeout(
                    "could not obtain an OAuth2 token: the token endpoint timed out",
                    self.connector,
                ) from None
            except (AuthlibBaseError, requests.RequestException, ValueError, KeyError) as exc:
                raise ConnectorError(
                    f"could not obtain an OAuth2 token ({type(exc).__name__})", self.connector
                ) from None
            self._renew = False

    def check_status(self, response: requests.Response, what: str) -> None:
        """Maps an upstream error status to the gateway's errors (never the body: it could
        carry patient data)."""
        status = response.status_code
        if status < 300:
            return
        if status in (401, 403):
            raise ConnectorError(
                f"upstream refused the gateway's credentials (HTTP {status})", self.connector
            )
        raise ConnectorError(f"{what} failed: upstream answered HTTP {status}", self.connector)

    def iter_body(
        self, response: requests.Response, deadline: float | None, what: str
    ) -> Iterator[bytes]:
        """The body of a streamed response as it arrives (each read returns what is there, up
        to CHUNK_SIZE, so a slow trickle still meets the `deadline` check between reads)."""
        raw = response.raw
        while True:
            self.timeout(deadline, what)
            with mapped(self.connector, what):
                chunk = raw.read1(CHUNK_SIZE, decode_content=True)
            if not chunk:
                return
            yield chunk

    def read_json(self, response: requests.Response, deadline: float | None, what: str) -> Any:
        """The JSON body of a streamed response, read within `deadline`; None when empty."""
        body = bytearray()
        for chunk in self.iter_body(response, deadline, what):
            body += chunk
            if len(body) > MAX_JSON_BYTES:
                raise ConnectorError(f"{what}: upstream answer is too large", self.connector)
        with mapped(self.connector, what):
            return json.loads(body) if body.strip() else None

    def close(self) -> None:
        self.session.close()


def _oauth_session(oidc: Callable[[str], OidcClient], oidc_id: str, timeouts: Timeouts) -> Any:
    """authlib's requests client for the client-credentials grant against the registration's
    token URL. Its own renewal check (leeway 0) is a safety net: `_ensure_token` renews ahead."""
    from authlib.integrations.requests_client import OAuth2Session

    try:
        client = oidc(oidc_id)
    except KeyError:
        raise ValueError(f"no oidc client registration {oidc_id}") from None
    return OAuth2Session(
        client_id=client.client_id,
        client_secret=client.client_secret,
        scope=client.scope,
        token_endpoint=client.token_url,
        grant_type=client.grant_type,
        leeway=0,
        default_timeout=(timeouts.connect, timeouts.read),
    )


@contextlib.contextmanager
def mapped(connector: str, what: str) -> Iterator[None]:
    """requests' and the decoders' exceptions -> the gateway's, by type only: their text holds
    the URL and so the query string."""
    with boundary(connector, what):
        try:
            yield
        except GatewayError:
            raise
        except (requests.Timeout, ReadTimeoutError) as exc:
            raise ConnectorTimeout(f"{what} timed out", connector) from exc
        except requests.ConnectionError as exc:
            if exc.args and isinstance(exc.args[0], ReadTimeoutError):
                raise ConnectorTimeout(f"{what} timed out", connector) from exc
            raise ConnectorError(f"{what} failed: connection failed or lost", connector) from exc
        except (requests.RequestException, Urllib3Error, http.client.HTTPException) as exc:
            raise ConnectorError(f"{what} failed: {type(exc).__name__}", connector) from exc
        except ValueError as exc:  # invalid JSON, malformed multipart, unreadable Part 10
            raise ConnectorError(f"{what}: upstream sent an invalid answer", connector) from exc


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


def rewrite_bulk(
    data: JsonDataset, base: str, uids: tuple[str, str, str], path: tuple[str, ...] = ()
) -> None:
    """Points every BulkDataURI, in sequences too, at the gateway (PS3.18 F.2.6), in place;
    RetrieveURL is dropped (the engine writes the gateway's own)."""
    data.pop(_RETRIEVE_URL, None)
    for tag_key, attr in data.items():
        if "BulkDataURI" in attr:
            attr["BulkDataURI"] = dicomjson.bulk_uri(base, *uids, (*path, tag_key))
        if attr.get("vr") == "SQ":
            for i, item in enumerate(attr.get("Value") or ()):
                rewrite_bulk(item, base, uids, (*path, tag_key, str(i)))


def part10_of(part: Part) -> Part10:
    """A decoded body part as Part10: the transfer syntax of its Content-Type parameter
    (PS3.18 8.7.3.5.2) or else of its File Meta Information (PS3.10 7.1); the SOP Instance
    UID of the data set (the meta's copy can disagree with it in real files)."""
    syntax = ""
    if part.content_type:
        syntax = parse_content_type(part.content_type)[1].get("transfer-syntax", "")
    try:
        ds = pydicom.dcmread(
            io.BytesIO(part.body), stop_before_pixels=True, specific_tags=["SOPInstanceUID"]
        )
    except Exception as exc:
        raise ValueError("body part is not a DICOM Part 10 object") from exc
    meta = ds.file_meta
    syntax = syntax or str(meta.get("TransferSyntaxUID", ""))
    if not syntax:
        raise ValueError("body part has no transfer syntax")
    sop = ds.get("SOPInstanceUID") or meta.get("MediaStorageSOPInstanceUID") or ""
    return Part10(part.body, syntax, str(sop))


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
        self._qido = _Upstream(web.qido_rs, oidc, self.id, settings.timeouts)
        wado = web.wado_rs or web.qido_rs
        same = wado == web.qido_rs
        self._wado = self._qido if same else _Upstream(wado, oidc, self.id, settings.timeouts)

    def _deadline(self) -> float:
        return time.monotonic() + self._timeouts.request

    # -- QIDO-RS ---------------------------------------------------------------------------

    def search(self, query: SearchQuery) -> SearchResult:
        """Pages through the upstream until offset + limit answers, an empty page or a page
        shorter than asked; answers de-duplicated by the level's UID."""
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
            page = self._search_page(path, pairs + paging, bool(in_path), deadline)
            before = len(answers)
            for data in page:
                uid = dicomjson.uid_of(data, query.level) or f"#{len(answers)}"
                answers.setdefault(uid, data)
            offset += len(page)
            # a short page ends the list; a page with nothing new means offset is ignored
            more = len(page) == asked and len(answers) > before
        datasets = list(answers.values())
        end = None if query.limit is None else query.offset + query.limit
        return SearchResult(datasets[query.offset : end], complete=not more)

    def _search_page(
        self, path: str, pairs: list[tuple[str, str]], scoped: bool, deadline: float
    ) -> list[JsonDataset]:
        response = self._qido.get(path, encode_query(pairs), DICOM_JSON, deadline, "search", True)
        with response:
            if response.status_code == 204 or (response.status_code == 404 and scoped):
                return []
            self._qido.check_status(response, "search")
            body = self._qido.read_json(response, deadline, "search")
        return self._datasets(body, "search")

    def _datasets(self, body: Any, what: str) -> list[JsonDataset]:
        if body is None:
            return []
        if not isinstance(body, list) or not all(isinstance(d, dict) for d in body):
            raise ConnectorError(f"{what}: upstream answer is not a DICOM JSON array", self.id)
        with mapped(self.id, what):
            out = [dicomjson.normalise(d) for d in body]
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
                raise NotFound(f"no {ref.level.lower()} with that UID", self.id)
            self._wado.check_status(response, "metadata")
            body = self._wado.read_json(response, deadline, "metadata")
        datasets = self._datasets(body, "metadata")
        if not datasets:
            raise NotFound(f"no {ref.level.lower()} with that UID", self.id)
        for data in datasets:
            uids = (
                dicomjson.first(data, STUDY_UID) or ref.study,
                dicomjson.first(data, SERIES_UID) or ref.series or "",
                dicomjson.first(data, SOP_UID) or ref.instance or "",
            )
            rewrite_bulk(data, bulk_base.rstrip("/"), uids)
        return datasets

    def retrieve_instances(
        self, ref: ResourceRef, transfer_syntax: str
    ) -> Generator[Part10, None, None]:
        """PS3.18 10.4 instances as `multipart/related; type="application/dicom"`, streamed:
        the request is sent on the first `next()`, which raises NotFound (404) or
        NotAcceptable (406); closing the generator closes the upstream response."""
        accept = f'multipart/related; type="application/dicom"; transfer-syntax={transfer_syntax}'
        response = self._wado.get(resource_path(ref), "", accept, None, "retrieve", stream=True)
        with response:
            if response.status_code == 404:
                raise NotFound(f"no {ref.level.lower()} with that UID", self.id)
            if response.status_code == 406:
                raise NotAcceptable(
                    f"upstream cannot send transfer syntax {transfer_syntax}", self.id
                )
            self._wado.check_status(response, "retrieve")
            content_type = response.headers.get("Content-Type", "")
            parts = iter_parts(content_type, self._wado.iter_body(response, None, "retrieve"))
            while True:
                with mapped(self.id, "retrieve"):
                    part = next(parts, None)
                    if part is None:
                        return
                    item = part10_of(part)
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
