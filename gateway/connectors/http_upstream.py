"""An upstream HTTP endpoint of a connector (a DICOMweb server, an archive's WADO endpoint),
reached with `requests`, and the retrieval of one instance through WADO-URI or WADO-RS.

`Upstream` is one endpoint: its base URL (`settings.Authentication.base_url`) and one pooled
`requests.Session`, built without network I/O. Authentication: BASIC (session credentials),
NONE, or OAUTH2 with the client-credentials grant through authlib's `OAuth2Session`; the token
is cached and renewed `TOKEN_LEEWAY` seconds before it expires, and once more after a 401.
Every request carries `timeout=(connect, read)`, shortened to what is left of a deadline when
the caller has one. Failures become `ConnectorError` / `ConnectorTimeout` naming the connector
(`mapped`); no message carries a credential, a token, or a query string (it can hold patient
data).

`retrieve_instance` fetches one instance as Part 10: WADO-URI (PS3.18 9.4, `?requestType=WADO`,
the protocol Weasis is pointed at) or WADO-RS (PS3.18 10.4, one instance as
`multipart/related; type="application/dicom"`).
"""

from __future__ import annotations

import contextlib
import http.client
import io
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlencode

import pydicom
import requests
from authlib.common.errors import AuthlibBaseError
from requests.adapters import HTTPAdapter
from requests.auth import AuthBase, HTTPBasicAuth
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.exceptions import ReadTimeoutError

from .. import jsoncodec
from ..errors import ConnectorError, ConnectorTimeout, GatewayError, NotAcceptable
from ..multipart import Part, iter_parts, parse_content_type
from ..part10 import identify
from ..settings import Authentication, OidcClient, Timeouts, WadoProtocol
from .base import Part10, boundary

log = logging.getLogger("gateway.connectors.http_upstream")

#: Renew an OAuth2 token this many seconds before it expires.
TOKEN_LEEWAY = 30
CHUNK_SIZE = 1024 * 1024
POOL_SIZE = 16
#: Largest JSON answer (one QIDO page or one metadata request) read into memory.
MAX_JSON_BYTES = 64 * 1024 * 1024
DICOM_MEDIA_TYPE = "application/dicom"


class Upstream:
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
        """GET base[/path][?query] (query already encoded). With OAUTH2, a 401 answer is retried
        once with a new token (the upstream may have revoked the cached one)."""
        url = (f"{self.base}/{path}" if path else self.base) + (f"?{query}" if query else "")
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

    def bearer_token(self, deadline: float | None) -> str:
        """A current client-credentials access token (fetched or renewed as needed), for a
        Weasis manifest in direct mode; ConnectorError when this endpoint is not OAUTH2."""
        if self._oauth is None:
            raise ConnectorError("the endpoint has no OAuth2 client", self.connector)
        with mapped(self.connector, "OAuth2 token request"):
            self._ensure_token(deadline)
            token = self._oauth.token
        if not token or not token.get("access_token"):
            raise ConnectorError("the token endpoint gave no access token", self.connector)
        return str(token["access_token"])

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
        self,
        response: requests.Response,
        deadline: float | None | Callable[[], float | None],
        what: str,
    ) -> Iterator[bytes]:
        """The body of a streamed response as it arrives (each read returns what is there, up
        to CHUNK_SIZE, so a slow trickle still meets the `deadline` check between reads).
        `deadline` may be a callable, read before each read, for a deadline that is lifted."""
        raw = response.raw
        while True:
            self.timeout(deadline() if callable(deadline) else deadline, what)
            with mapped(self.connector, what):
                chunk = raw.read1(CHUNK_SIZE, decode_content=True)
            if not chunk:
                return
            yield chunk

    def discard(self, response: requests.Response, deadline: float | None, what: str) -> None:
        """Gives the connection of an answer without a body (a 204 that declares none) back to
        the pool. Any other unwanted answer is left for `close()` to drop with its connection:
        reading a body nobody wants could take up to the time-outs, and a 204 that carries a
        body anyway would leave it on the connection, to be read as the next request's answer."""
        headers = response.headers
        if response.status_code != 204 or "Transfer-Encoding" in headers:
            return
        if headers.get("Content-Length", "0").strip() != "0":
            return
        with contextlib.suppress(ConnectorError):
            for _ in self.iter_body(response, deadline, what):
                return  # a byte where none was declared: the connection goes with close()

    def read_json(self, response: requests.Response, deadline: float | None, what: str) -> Any:
        """The JSON body of a streamed response, read within `deadline`; None when empty."""
        body = bytearray()
        for chunk in self.iter_body(response, deadline, what):
            body += chunk
            if len(body) > MAX_JSON_BYTES:
                raise ConnectorError(f"{what}: upstream answer is too large", self.connector)
        with mapped(self.connector, what):
            return jsoncodec.loads(body) if body.strip() else None

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
        except (ValueError, TypeError, KeyError, AttributeError, IndexError) as exc:
            # invalid JSON, DICOM JSON of the wrong shape, malformed multipart, bad Part 10
            raise ConnectorError(f"{what}: upstream sent an invalid answer", connector) from exc


def part10_of(part: Part) -> Part10:
    """A decoded body part as Part10: the transfer syntax of its Content-Type parameter
    (PS3.18 8.7.3.5.2) or else of its File Meta Information (PS3.10 7.1), and the SOP
    Instance UID of the data set. Only the first bytes are read (a stream passes through
    without its data sets being parsed); where they do not tell, pydicom reads the object."""
    syntax = ""
    if part.content_type:
        syntax = parse_content_type(part.content_type)[1].get("transfer-syntax", "")
    known = identify(part.body)
    if known is not None:
        return Part10(part.body, syntax or known[0], known[1])
    return _parsed(part.body, syntax)


def _parsed(body: bytes, syntax: str) -> Part10:
    """The transfer syntax and SOP Instance UID of the data set itself (the meta's copy can
    disagree with it in real files), by pydicom."""
    try:
        ds = pydicom.dcmread(
            io.BytesIO(body), stop_before_pixels=True, specific_tags=["SOPInstanceUID"]
        )
    except Exception as exc:
        raise ValueError("body part is not a DICOM Part 10 object") from exc
    meta = ds.file_meta
    syntax = syntax or str(meta.get("TransferSyntaxUID", ""))
    if not syntax:
        raise ValueError("body part has no transfer syntax")
    sop = ds.get("SOPInstanceUID") or meta.get("MediaStorageSOPInstanceUID") or ""
    return Part10(body, syntax, str(sop))


# ---- one instance through WADO-URI or WADO-RS ------------------------------------------------


def retrieve_instance(
    upstream: Upstream,
    protocol: WadoProtocol,
    uids: tuple[str, str, str],
    transfer_syntax: str,
    deadline: float | None = None,
) -> Part10:
    """The instance `uids` (study, series, SOP instance) from the archive behind `upstream`,
    in `transfer_syntax` ("*": as stored). NotAcceptable when the archive sends another syntax
    than the one asked; ConnectorError when it has no such instance (HTTP 404: the index that
    listed it and the archive disagree), refuses the credentials, or sends something else."""
    what = f"{protocol} retrieve"
    if protocol == "WADO-RS":
        part = _wado_rs(upstream, uids, transfer_syntax, deadline, what)
    else:
        part = _wado_uri(upstream, uids, transfer_syntax, deadline, what)
    if transfer_syntax != "*" and part.transfer_syntax != transfer_syntax:
        raise NotAcceptable(
            f"the archive cannot send transfer syntax {transfer_syntax}", upstream.connector
        )
    if part.sop_instance_uid != uids[2]:
        raise ConnectorError(f"{what}: the archive sent another instance", upstream.connector)
    return part


def wado_uri_query(uids: tuple[str, str, str], transfer_syntax: str) -> str:
    """The query of a Retrieve DICOM Instance request (PS3.18 9.4.1): requestType, studyUID,
    seriesUID, objectUID, contentType=application/dicom and, unless "*", transferSyntax
    (9.4.1.2.3). `/` stays literal: Orthanc 1.10 does not percent-decode the query."""
    study, series, sop = uids
    pairs = [
        ("requestType", "WADO"), ("studyUID", study), ("seriesUID", series),
        ("objectUID", sop), ("contentType", DICOM_MEDIA_TYPE),
    ]  # fmt: skip
    if transfer_syntax != "*":
        pairs.append(("transferSyntax", transfer_syntax))
    return urlencode(pairs, safe="/")


def _wado_uri(
    upstream: Upstream,
    uids: tuple[str, str, str],
    transfer_syntax: str,
    deadline: float | None,
    what: str,
) -> Part10:
    query = wado_uri_query(uids, transfer_syntax)
    response = upstream.get("", query, DICOM_MEDIA_TYPE, deadline, what, stream=True)
    with response:
        _instance_status(upstream, response, what)
        content_type = response.headers.get("Content-Type", DICOM_MEDIA_TYPE)
        chunks = list(upstream.iter_body(response, deadline, what))
    with mapped(upstream.connector, what):
        return part10_of(Part({"content-type": content_type}, b"".join(chunks)))


def _wado_rs(
    upstream: Upstream,
    uids: tuple[str, str, str],
    transfer_syntax: str,
    deadline: float | None,
    what: str,
) -> Part10:
    """PS3.18 10.4: the instance resource, one part of multipart/related (8.7.3.5)."""
    path = "studies/{}/series/{}/instances/{}".format(*uids)
    accept = f'multipart/related; type="{DICOM_MEDIA_TYPE}"; transfer-syntax={transfer_syntax}'
    response = upstream.get(path, "", accept, deadline, what, stream=True)
    with response:
        if response.status_code == 406:
            raise NotAcceptable(
                f"the archive cannot send transfer syntax {transfer_syntax}", upstream.connector
            )
        _instance_status(upstream, response, what)
        content_type = response.headers.get("Content-Type", "")
        with mapped(upstream.connector, what):
            parts = iter_parts(content_type, upstream.iter_body(response, deadline, what))
            part = next(parts, None)
            if part is None:
                raise ConnectorError(f"{what}: the archive sent no instance", upstream.connector)
            return part10_of(part)


def _instance_status(upstream: Upstream, response: requests.Response, what: str) -> None:
    if response.status_code == 404:
        raise ConnectorError(
            f"{what}: the archive has no instance that its index lists (HTTP 404)",
            upstream.connector,
        )
    upstream.check_status(response, what)
