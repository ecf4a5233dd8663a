"""The configuration's marshmallow schemas: one per block of the file, each building its part of
the frozen settings (see the `gateway.config` docstring for the rules beyond the shape)."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from contextvars import ContextVar
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit

from marshmallow import (
    RAISE,
    Schema,
    ValidationError,
    fields,
    post_load,
    pre_load,
    validate,
    validates_schema,
)

from .. import settings as s
from ..connectors.db_url import to_sqlalchemy_url
from .fields import (
    AeTitle,
    Choice,
    Criteria,
    HttpTags,
    IdList,
    Int,
    NamedMap,
    Scope,
    Seconds,
    Secret,
    TagList,
    Text,
    column_name,
    http_url,
    label_name,
    ts_uid,
)

MISSING = "Missing data for required field."

#: The client registration ids of `oidc` (both files) while a configuration is being loaded,
#: set by `gateway.config` around `Schema.load`; `oauth2.oidc-id` must name one of them.
OIDC_IDS: ContextVar[frozenset[str]] = ContextVar("gateway_config_oidc_ids", default=frozenset())


class Block(Schema):
    """Base schema: unknown keys rejected; an empty value of a known key means "not set"."""

    class Meta:
        unknown = RAISE

    #: marshmallow reads this class attribute
    error_messages: dict[str, str] = {  # noqa: RUF012
        "unknown": "Unknown key.",
        "type": "Not a mapping of keys.",
    }

    @pre_load
    def _prepare_input(self, data: Any, **kw: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        known = {f.data_key or name for name, f in self.load_fields.items()}
        return self.prepare(
            {k: v for k, v in data.items() if not (k in known and (v is None or v == ""))}
        )

    def prepare(self, data: dict[str, Any]) -> dict[str, Any]:
        return data


class ServerSchema(Block):
    url = Text(validate=http_url)
    port = Int(validate=validate.Range(min=1, max=65535))
    context = Text()

    @validates_schema
    def _one_port(self, data: dict[str, Any], **kw: Any) -> None:
        if "port" in data and "url" in data:
            parts = urlsplit(data["url"])
            if parts.port is not None or parts.path.strip("/"):
                raise ValidationError(
                    {
                        "url": [
                            "With `port` set, url is scheme and host only (path goes in context)."
                        ]
                    }
                )

    @post_load
    def _make(self, data: dict[str, Any], **kw: Any) -> s.Server | None:
        return s.Server(**data) if data.get("url") else None


class BasicSchema(Block):
    login = Text()
    password = Secret()
    server = fields.Nested(ServerSchema)


class OAuth2Schema(Block):
    oidc_id = Text(data_key="oidc-id")
    server = fields.Nested(ServerSchema)


# type -> (sub-block or None for the top level, required names); "server" means server.url
_NEEDS: dict[str, tuple[str | None, tuple[str, ...]]] = {
    "BASIC": ("basic", ("login", "password", "server")),
    "OAUTH2": ("oauth2", ("oidc_id", "server")),
    "NONE": (None, ("server",)),
}


def _missing(values: Mapping[str, Any], names: Sequence[str]) -> dict[str, Any]:
    errors: dict[str, Any] = {}
    for name in names:
        if values.get(name) is None:
            key = "oidc-id" if name == "oidc_id" else name
            errors[key] = {"url": [MISSING]} if name == "server" else [MISSING]
    return errors


class AuthSchema(Block):
    type = Choice(("BASIC", "OAUTH2", "NONE"), required=True)
    oauth2 = fields.Nested(OAuth2Schema)
    basic = fields.Nested(BasicSchema)
    server = fields.Nested(ServerSchema)

    @validates_schema
    def _complete(self, data: dict[str, Any], **kw: Any) -> None:
        block, names = _NEEDS[data["type"]]
        errors = _missing(data.get(block) or {} if block else data, names)
        if data["type"] == "OAUTH2" and not errors:
            known = OIDC_IDS.get()
            if data["oauth2"]["oidc_id"] not in known:
                hint = ", ".join(sorted(known)) or "none is configured"
                errors["oidc-id"] = [f"No such client registration in `oidc` (known: {hint})."]
        if errors:
            raise ValidationError({block: errors} if block else errors)

    @post_load
    def _make(self, data: dict[str, Any], **kw: Any) -> s.Authentication:
        basic, oauth2 = data.get("basic") or {}, data.get("oauth2") or {}
        return s.Authentication(
            type=data["type"],
            basic=s.BasicAuth(**basic) if not _missing(basic, _NEEDS["BASIC"][1]) else None,
            oauth2=(
                s.OAuth2Auth(**oauth2)
                if not _missing(oauth2, _NEEDS["OAUTH2"][1]) and oauth2["oidc_id"] in OIDC_IDS.get()
                else None
            ),
            server=data.get("server"),
        )


class WadoSchema(Block):
    """`wado`, `qido-rs`, `wado-rs`: a block holding one `authentication`."""

    authentication = fields.Nested(AuthSchema, required=True)

    @post_load
    def _make(self, data: dict[str, Any], **kw: Any) -> s.Authentication:
        auth: s.Authentication = data["authentication"]
        return auth


class DbWadoSchema(WadoSchema):
    """A DB connector's `wado`, with `protocol` (a gateway addition): how instances are fetched
    from it when the select has no file-path column."""

    protocol = Choice(("WADO-URI", "WADO-RS"))

    @post_load
    def _make(self, data: dict[str, Any], **kw: Any) -> dict[str, Any]:
        return {"wado": data["authentication"], "wado_protocol": data.get("protocol", "WADO-URI")}


class TimeoutsSchema(Block):
    connect, read, request = Seconds(), Seconds(), Seconds()
    acse, dimse, network = Seconds(), Seconds(), Seconds()


class CacheBoundsSchema(Block):
    ttl = fields.Float(validate=validate.Range(min=0))
    max_bytes = Int(data_key="max-bytes", validate=validate.Range(min=0))

    @post_load
    def _make(self, data: dict[str, Any], **kw: Any) -> dict[str, Any]:
        return data  # merged over gateway.cache's bounds by the loader


class ManifestSchema(Block):
    transfer_syntax_uid = Text(data_key="transfer-syntax-uid", validate=ts_uid)
    compression_rate = Int(data_key="compressionRate", validate=validate.Range(min=0, max=100))
    require_only_sop_instance_uid = fields.Boolean(data_key="requireOnlySOPInstanceUID")
    additionnal_parameters = Text(data_key="additionnalParameters")
    override_dicom_tags = TagList(data_key="overrideDicomTags")
    http_tags = HttpTags(data_key="httpTags")

    @post_load
    def _make(self, data: dict[str, Any], **kw: Any) -> s.WeasisManifest:
        return s.WeasisManifest(**data)


class WeasisSchema(Block):
    manifest = fields.Nested(ManifestSchema)
    direct = fields.Boolean()  # gateway addition: Weasis downloads from the archive itself

    @post_load
    def _make(self, data: dict[str, Any], **kw: Any) -> s.WeasisManifest:
        manifest = data.get("manifest") or s.WeasisManifest()
        return replace(manifest, direct=data.get("direct", False))


class SearchCriteriaSchema(Block):
    deactivated = Criteria()

    @post_load
    def _make(self, data: dict[str, Any], **kw: Any) -> frozenset[str]:
        return data.get("deactivated") or frozenset()


class QuerySchema(Block):
    select = Text(required=True)
    accession_number_column = Text(data_key="accession-number-column", validate=column_name)
    patient_id_column = Text(data_key="patient-id-column", validate=column_name)
    study_instance_uid_column = Text(data_key="study-instance-uid-column", validate=column_name)
    serie_instance_uid_column = Text(data_key="serie-instance-uid-column", validate=column_name)
    sop_instance_uid_column = Text(data_key="sop-instance-uid-column", validate=column_name)
    file_path_column = Text(data_key="file-path-column", validate=label_name)
    file_path_root = Text(data_key="file-path-root")

    @post_load
    def _make(self, data: dict[str, Any], **kw: Any) -> s.DbQuery:
        return s.DbQuery(**data)


class DbSchema(Block):
    user, password, uri, driver = Text(), Secret(), Text(required=True), Text()
    query = fields.Nested(QuerySchema, required=True)
    wado = fields.Nested(DbWadoSchema)

    @validates_schema
    def _database_url(self, data: dict[str, Any], **kw: Any) -> None:
        """`uri` and `driver` as the connector will map them (`db_url.to_sqlalchemy_url`): a
        URL or driver it cannot use stops the start, naming the key."""
        if "uri" not in data:
            return
        for key, driver in (("uri", None), ("driver", data.get("driver"))):
            try:
                to_sqlalchemy_url(data["uri"], driver)
            except ValueError as err:
                raise ValidationError({key: [_sentence(str(err))]}) from None

    @post_load
    def _make(self, data: dict[str, Any], **kw: Any) -> s.DbConnector:
        data.update(data.pop("wado", None) or {})
        return s.DbConnector(**data)


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:].rstrip(".") + "."


class TlsSchema(Block):
    mode = fields.Boolean()
    need_client_authentication = fields.Boolean(data_key="need-client-authentication")

    @post_load
    def _make(self, data: dict[str, Any], **kw: Any) -> s.Tls:
        return s.Tls(**data)


_PEM_ONLY = (
    "Only PEM is supported: convert the store to a PEM file (for example "
    "`openssl pkcs12 -in store.p12 -out store.pem`)."
)


class TrustStoreSchema(Block):
    url = Text(required=True)
    type = Choice(("PEM",), message=_PEM_ONLY)
    password = Secret()

    @post_load
    def _make(self, data: dict[str, Any], **kw: Any) -> s.TrustStore:
        return s.TrustStore(**data)


class KeyStoreSchema(TrustStoreSchema):
    key_store_password = Secret(data_key="keyStorePassword")

    @post_load
    def _make(self, data: dict[str, Any], **kw: Any) -> s.KeyStore:
        data.setdefault("key_store_password", data.get("password"))
        return s.KeyStore(**data)


class DimseSchema(Block):
    calling_aet = AeTitle(data_key="calling-aet", required=True)
    aet = AeTitle(required=True)
    host = Text(required=True)
    port = Int(required=True, validate=validate.Range(min=1, max=65535))
    tls = fields.Nested(TlsSchema)
    key_store = fields.Nested(KeyStoreSchema, data_key="keyStore")
    trust_store = fields.Nested(TrustStoreSchema, data_key="truststore")
    retrieve_method = Choice(("C-GET", "C-MOVE"), data_key="retrieve-method")
    query_model = Choice(
        ("auto", "relational", "hierarchical"), fold=str.lower, data_key="query-model"
    )
    max_associations = Int(data_key="max-associations", validate=validate.Range(min=1))
    max_pdu = Int(data_key="max-pdu", validate=validate.Range(min=0, max=0xFFFFFFFF))
    reuse_seconds = fields.Float(data_key="reuse-seconds", validate=validate.Range(min=0, max=600))

    @validates_schema
    def _client_key(self, data: dict[str, Any], **kw: Any) -> None:
        tls = data.get("tls") or s.Tls()
        if tls.mode and tls.need_client_authentication and "key_store" not in data:
            raise ValidationError(
                {
                    "keyStore": [
                        "Missing data for required field (tls.need-client-authentication is true)."
                    ]
                }
            )

    @post_load
    def _make(self, data: dict[str, Any], **kw: Any) -> s.Dimse:
        return s.Dimse(**data)


class DicomSchema(Block):
    dimse = fields.Nested(DimseSchema, required=True)
    wado = fields.Nested(WadoSchema)

    @post_load
    def _make(self, data: dict[str, Any], **kw: Any) -> s.DicomConnector:
        return s.DicomConnector(**data)


class DicomWebSchema(Block):
    qido_rs = fields.Nested(WadoSchema, data_key="qido-rs", required=True)
    wado_rs = fields.Nested(WadoSchema, data_key="wado-rs")
    page_size = Int(data_key="page-size", validate=validate.Range(min=1))

    @post_load
    def _make(self, data: dict[str, Any], **kw: Any) -> s.DicomWebConnector:
        data.setdefault("wado_rs", data["qido_rs"])
        return s.DicomWebConnector(**data)


# connector type -> (key of its block, attribute)
_BLOCKS = {
    "DB": ("db-connector", "db"),
    "DICOM": ("dicom-connector", "dicom"),
    "DICOM_WEB": ("dicom-web-connector", "dicom_web"),
}


class ConnectorSchema(Block):
    type = Choice(tuple(_BLOCKS), required=True)
    deactivated = fields.Nested(SearchCriteriaSchema, data_key="search-criteria")
    weasis = fields.Nested(WeasisSchema)
    timeouts = fields.Nested(TimeoutsSchema)
    cache = fields.Nested(CacheBoundsSchema)  # gateway addition
    db = fields.Nested(DbSchema, data_key="db-connector")
    dicom = fields.Nested(DicomSchema, data_key="dicom-connector")
    dicom_web = fields.Nested(DicomWebSchema, data_key="dicom-web-connector")

    def prepare(self, data: dict[str, Any]) -> dict[str, Any]:
        """Exactly the block of the connector's type (checked first: the other blocks' contents
        would only add noise)."""
        kind = data.get("type")
        if not isinstance(kind, str) or kind.strip().upper() not in _BLOCKS:
            return data  # the field reports it
        kind = kind.strip().upper()
        wanted = _BLOCKS[kind][0]
        errors = {
            key: [f"Not allowed for a connector of type {kind} (it takes {wanted})."]
            for key, _ in _BLOCKS.values()
            if key != wanted and key in data
        }
        if wanted not in data:
            errors[wanted] = [f"Missing data for required field (type {kind})."]
        if errors:
            raise ValidationError(errors)
        return data


class ConnectorBlockSchema(Block):
    default = IdList()
    dicom_web_level_limit = Choice(("STUDY", "SERIE"), data_key="dicom-web-level-limit")
    config = NamedMap(ConnectorSchema)


class OidcClientSchema(Block):
    client_id = Text(data_key="client-id", required=True)
    client_secret = Secret(data_key="client-secret", required=True)
    token_url = Text(data_key="token-url", required=True, validate=http_url)
    scope = Scope()
    grant_type = Choice(
        ("client_credentials",),
        fold=str.lower,
        data_key="grant-type",
        message="Only client_credentials is supported.",
    )


class DemoSchema(Block):
    directory = Text(required=True)

    @post_load
    def _make(self, data: dict[str, Any], **kw: Any) -> s.DemoArchive:
        return s.DemoArchive(**data)


#: A socket file name under relay-dir is at most this long; AF_UNIX paths hold 107 bytes.
_RELAY_NAME = len("/storescp-65535.sock")
_UNIX_PATH_MAX = 107
_HOST = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?")


def _listen_host(value: str) -> None:
    """An IP address or a host name the storage SCP can bind to."""
    try:
        ipaddress.ip_address(value)
    except ValueError:
        if not _HOST.fullmatch(value):
            raise ValidationError("Not an IP address or a host name.") from None


def _redis_url(value: str) -> None:
    if urlsplit(value).scheme not in ("redis", "rediss", "unix"):
        raise ValidationError("Must be a redis://, rediss:// or unix:// URL.")


def _absolute(value: str) -> None:
    if not value.startswith("/"):
        raise ValidationError("Must be an absolute path.")


def _relay_dir(value: str) -> None:
    _absolute(value)
    if len(value.rstrip("/").encode()) + _RELAY_NAME > _UNIX_PATH_MAX:
        raise ValidationError(
            f"Too long for a local socket path: at most {_UNIX_PATH_MAX - _RELAY_NAME} bytes."
        )


class StorageScpSchema(Block):
    """`gateway.storage-scp`: the storage SCP that C-MOVE retrievals need."""

    aet = AeTitle(required=True)
    port = Int(required=True, validate=validate.Range(min=1, max=65535))
    host = Text(validate=_listen_host)
    relay_dir = Text(data_key="relay-dir", validate=_relay_dir)

    @post_load
    def _make(self, data: dict[str, Any], **kw: Any) -> s.StorageScpOptions:
        return s.StorageScpOptions(**data)


class CacheSchema(Block):
    """`gateway.cache`: the metadata cache (see `settings.CacheOptions`)."""

    backend = Choice(("memory", "redis"), fold=str.lower)
    redis_url = Text(data_key="redis-url", validate=_redis_url)
    key_prefix = Text(data_key="key-prefix", validate=validate.Length(min=1, max=100))
    ttl = fields.Float(validate=validate.Range(min=0))
    max_bytes = Int(data_key="max-bytes", validate=validate.Range(min=0))
    admin_token = Secret(data_key="admin-token", validate=validate.Length(min=16))

    @validates_schema
    def _redis_needs_url(self, data: dict[str, Any], **kw: Any) -> None:
        if data.get("backend") == "redis" and not data.get("redis_url"):
            raise ValidationError({"redis-url": ["Required when backend is redis."]})

    @post_load
    def _make(self, data: dict[str, Any], **kw: Any) -> s.CacheOptions:
        bounds = {k: data.pop(k) for k in ("ttl", "max_bytes") if k in data}
        return s.CacheOptions(**data, bounds=s.CacheBounds(**bounds))


class WeasisOptionsSchema(Block):
    """`gateway.weasis`: where and how long the manifests `/weasis/launch` links to are kept."""

    manifest_lifetime = Seconds(data_key="manifest-lifetime")
    store_dir = Text(data_key="store-dir", validate=_absolute)

    @post_load
    def _make(self, data: dict[str, Any], **kw: Any) -> s.WeasisOptions:
        return s.WeasisOptions(**data)


class GatewaySchema(Block):
    public_url = Text(data_key="public-url", validate=http_url)
    trust_proxy = fields.Boolean(data_key="trust-proxy")
    max_results = Int(data_key="max-results", validate=validate.Range(min=1))
    timeouts = fields.Nested(TimeoutsSchema)
    demo_archive = fields.Nested(DemoSchema, data_key="demo-archive")
    storage_scp = fields.Nested(StorageScpSchema, data_key="storage-scp")
    weasis = fields.Nested(WeasisOptionsSchema)
    cache = fields.Nested(CacheSchema)

    @post_load
    def _make(self, data: dict[str, Any], **kw: Any) -> s.GatewayOptions:
        data["timeouts"] = s.Timeouts(**data.get("timeouts", {}))
        if data.get("public_url"):
            data["public_url"] = data["public_url"].rstrip("/")
        return s.GatewayOptions(**data)


class TopSchema(Block):
    gateway = fields.Nested(GatewaySchema)
    oidc = NamedMap(OidcClientSchema)
    connector = fields.Nested(ConnectorBlockSchema)


class OidcFileSchema(Block):
    oidc = NamedMap(OidcClientSchema)
