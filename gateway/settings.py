"""Frozen settings: what `config.load_settings` builds from the YAML and the app runs on.

The shapes follow the connector model of Viewer-Hub (`connector.*`, see
`config/gateway.example.yml`); the gateway's own additions live in `gateway`, `oidc` and the
per-connector `timeouts` block. Nothing here does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

ConnectorType = Literal["DB", "DICOM", "DICOM_WEB"]
AuthType = Literal["BASIC", "OAUTH2", "NONE"]
RetrieveMethod = Literal["C-GET", "C-MOVE"]
QueryModel = Literal["auto", "relational", "hierarchical"]
#: How a DB connector asks its `wado` endpoint for one instance (PS3.18 9.4 or 10.4).
WadoProtocol = Literal["WADO-URI", "WADO-RS"]

#: The five identifier criteria of the seed's `search-criteria.deactivated`.
CRITERIA = (
    "SOP_INSTANCE_UID",
    "SERIE_INSTANCE_UID",
    "STUDY_INSTANCE_UID",
    "STUDY_ACCESSION_NUMBER",
    "PATIENT_ID",
)


@dataclass(frozen=True)
class Server:
    """`server: {url, port, context}`: the base URL is url + `:port` (if set) + context."""

    url: str
    port: int | None = None
    context: str = ""

    @property
    def base_url(self) -> str:
        base = self.url.rstrip("/")
        if self.port is not None:
            base = f"{base}:{self.port}"
        context = self.context.strip("/")
        return f"{base}/{context}" if context else base


@dataclass(frozen=True)
class BasicAuth:
    login: str
    password: str
    server: Server | None = None


@dataclass(frozen=True)
class OAuth2Auth:
    oidc_id: str
    server: Server | None = None


@dataclass(frozen=True)
class Authentication:
    """An `authentication` block. `NONE` (a gateway addition) is an unauthenticated upstream
    whose address is `server`."""

    type: AuthType
    basic: BasicAuth | None = None
    oauth2: OAuth2Auth | None = None
    server: Server | None = None

    @property
    def base_url(self) -> str:
        """The endpoint this block points at: the server of the block its `type` selects."""
        chosen = {"BASIC": self.basic, "OAUTH2": self.oauth2}.get(self.type)
        server = chosen.server if chosen is not None else self.server
        if server is None:  # the schema refuses this; kept for type narrowing
            raise ValueError(f"authentication {self.type} has no server")
        return server.base_url


@dataclass(frozen=True)
class OidcClient:
    """A client registration that `oauth2.oidc-id` refers to."""

    id: str
    client_id: str
    client_secret: str
    token_url: str
    scope: str | None = None
    grant_type: Literal["client_credentials"] = "client_credentials"


@dataclass(frozen=True)
class WeasisManifest:
    transfer_syntax_uid: str | None = None
    compression_rate: int | None = None
    require_only_sop_instance_uid: bool = False
    additionnal_parameters: str | None = None
    override_dicom_tags: tuple[str, ...] = ()
    http_tags: tuple[tuple[str, str], ...] = ()
    #: gateway addition (`weasis.direct`): Weasis downloads from the archive itself, with the
    #: credentials of the connector's `wado` / `wado-rs` block written into the manifest
    direct: bool = False


@dataclass(frozen=True)
class Timeouts:
    """Seconds. `request` bounds one connector's whole answer to one gateway request."""

    connect: float = 5.0
    read: float = 30.0
    request: float = 60.0
    acse: float = 10.0
    dimse: float = 30.0
    network: float = 60.0


@dataclass(frozen=True)
class DbQuery:
    select: str
    accession_number_column: str | None = None
    patient_id_column: str | None = None
    study_instance_uid_column: str | None = None
    serie_instance_uid_column: str | None = None
    sop_instance_uid_column: str | None = None
    # gateway additions: where the gateway can read each instance's Part 10 file
    file_path_column: str | None = None
    file_path_root: str | None = None


@dataclass(frozen=True)
class DbConnector:
    uri: str
    query: DbQuery
    user: str | None = None
    password: str | None = None
    driver: str | None = None
    wado: Authentication | None = None
    # gateway addition (`wado.protocol`): how instances are fetched from `wado` when the select
    # has no file-path column
    wado_protocol: WadoProtocol = "WADO-URI"


@dataclass(frozen=True)
class Tls:
    mode: bool = False
    need_client_authentication: bool = False


@dataclass(frozen=True)
class KeyStore:
    """PEM only: `url` is a file holding the certificate chain and the private key."""

    url: str
    type: str = "PEM"
    password: str | None = None
    key_store_password: str | None = None


@dataclass(frozen=True)
class TrustStore:
    """PEM only: `url` is a file of CA certificates."""

    url: str
    type: str = "PEM"
    password: str | None = None


@dataclass(frozen=True)
class Dimse:
    calling_aet: str
    aet: str
    host: str
    port: int
    tls: Tls = field(default_factory=Tls)
    key_store: KeyStore | None = None
    trust_store: TrustStore | None = None
    # gateway additions
    retrieve_method: RetrieveMethod = "C-GET"
    query_model: QueryModel = "auto"
    max_associations: int = 4
    max_pdu: int = 0
    #: seconds an association that served a search stays open for the next search (0: one
    #: association per request); idle ones count against `max_associations`
    reuse_seconds: float = 5.0


@dataclass(frozen=True)
class DicomConnector:
    dimse: Dimse
    wado: Authentication | None = None


@dataclass(frozen=True)
class DicomWebConnector:
    qido_rs: Authentication
    wado_rs: Authentication | None = None
    # gateway addition: the upstream's own page size for QIDO paging
    page_size: int = 1000


@dataclass(frozen=True)
class CacheBounds:
    """How long a connector's cached metadata lives (`ttl` seconds; 0: not cached) and how
    many bytes of it one process keeps (the memory backend; Redis has its own maxmemory)."""

    ttl: float = 60.0
    max_bytes: int = 64 * 1024 * 1024


@dataclass(frozen=True)
class ConnectorSettings:
    id: str
    type: ConnectorType
    deactivated: frozenset[str] = frozenset()
    weasis: WeasisManifest = field(default_factory=WeasisManifest)
    db: DbConnector | None = None
    dicom: DicomConnector | None = None
    dicom_web: DicomWebConnector | None = None
    timeouts: Timeouts = field(default_factory=Timeouts)
    #: gateway addition (`cache`): this connector's bounds; default `gateway.cache`'s
    cache: CacheBounds | None = None


@dataclass(frozen=True)
class DemoArchive:
    """The embedded demo archive: built from pydicom's sample files on first start."""

    directory: str


@dataclass(frozen=True)
class StorageScpOptions:
    """`gateway.storage-scp`: the embedded storage SCP that C-MOVE retrievals send to.
    `aet` is the move destination the PACS must know, at `host` (the address it listens on)
    and `port`; `relay_dir` holds the local socket through which the worker that owns the port
    hands objects to the other workers (default: a private folder under the temp directory)."""

    aet: str
    port: int
    host: str = "127.0.0.1"
    relay_dir: str | None = None


@dataclass(frozen=True)
class WeasisOptions:
    """`gateway.weasis`: stored manifests (the ones `/weasis/launch` links to) live for
    `manifest_lifetime` seconds in `store_dir`, shared by the workers of one machine (default:
    a private folder under the temp directory)."""

    manifest_lifetime: float = 300.0
    store_dir: str | None = None


@dataclass(frozen=True)
class CacheOptions:
    """`gateway.cache`: the metadata cache. `backend` memory (each process its own) or redis
    (at `redis_url`, keys under `key_prefix`, shared by workers and machines); `bounds` the
    default of every connector; `admin_token` enables `POST /admin/cache/purge`."""

    backend: Literal["memory", "redis"] = "memory"
    redis_url: str | None = None
    key_prefix: str = "dicomweb-gateway"
    bounds: CacheBounds = field(default_factory=CacheBounds)
    admin_token: str | None = None


@dataclass(frozen=True)
class GatewayOptions:
    public_url: str | None = None
    trust_proxy: bool = False
    max_results: int = 1000
    demo_archive: DemoArchive | None = None
    timeouts: Timeouts = field(default_factory=Timeouts)
    storage_scp: StorageScpOptions | None = None
    weasis: WeasisOptions = field(default_factory=WeasisOptions)
    cache: CacheOptions = field(default_factory=CacheOptions)


@dataclass(frozen=True)
class Settings:
    connectors: tuple[ConnectorSettings, ...]
    #: resolved from `connector.default`: the ids `/dicomweb` merges, in order
    default: tuple[str, ...]
    dicom_web_level_limit: Literal["STUDY", "SERIE"] | None = None
    gateway: GatewayOptions = field(default_factory=GatewayOptions)
    oidc: tuple[OidcClient, ...] = ()

    def connector(self, connector_id: str) -> ConnectorSettings:
        for c in self.connectors:
            if c.id == connector_id:
                return c
        raise KeyError(connector_id)

    def oidc_client(self, oidc_id: str) -> OidcClient:
        for c in self.oidc:
            if c.id == oidc_id:
                return c
        raise KeyError(oidc_id)
