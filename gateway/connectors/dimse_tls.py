"""TLS for DICOM associations (PS3.15 B.1, the Basic TLS Secure Transport Connection Profile).

The seed's `tls`, `keyStore` and `truststore` blocks become one `ssl.SSLContext` that pynetdicom
wraps the association's socket with (`tls_args`). Stores are PEM files only:
`keyStore.url` holds our certificate chain and private key (`keyStorePassword`, else `password`,
is the key's passphrase); `truststore.url` holds the CA certificates we trust for the PACS.
"""

from __future__ import annotations

import ssl
from urllib.parse import unquote, urlparse

from ..errors import ConnectorError
from ..settings import Dimse, KeyStore, TrustStore


def store_path(url: str) -> str:
    """A store's file: a plain path or a `file:` URL."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return unquote(parsed.path)
    if parsed.scheme and len(parsed.scheme) > 1:
        raise ValueError(f"only file paths or file: URLs are supported, not {parsed.scheme}:")
    return url


def _check_pem(kind: str, store_type: str, connector: str) -> None:
    if store_type.upper() != "PEM":
        raise ConnectorError(f"{kind} type {store_type} is not supported (PEM only)", connector)


def _load_key_store(context: ssl.SSLContext, store: KeyStore, connector: str) -> None:
    _check_pem("keyStore", store.type, connector)
    passphrase = store.key_store_password or store.password
    try:
        context.load_cert_chain(store_path(store.url), password=passphrase)
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise ConnectorError(f"cannot load keyStore: {type(exc).__name__}", connector) from exc


def _load_trust_store(context: ssl.SSLContext, store: TrustStore | None, connector: str) -> None:
    if store is None:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
        return
    _check_pem("truststore", store.type, connector)
    try:
        context.load_verify_locations(cafile=store_path(store.url))
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise ConnectorError(f"cannot load truststore: {type(exc).__name__}", connector) from exc


def client_context(dimse: Dimse, connector: str) -> ssl.SSLContext | None:
    """The SSLContext for associations to the PACS, or None without `tls.mode`. The PACS's
    certificate is verified against the truststore (or the system's CAs) and must name
    `dimse.host`; our certificate is presented when a keyStore is configured, and a keyStore
    is required with `need-client-authentication`."""
    if not dimse.tls.mode:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_trust_store(context, dimse.trust_store, connector)
    if dimse.key_store is not None:
        _load_key_store(context, dimse.key_store, connector)
    elif dimse.tls.need_client_authentication:
        raise ConnectorError("tls.need-client-authentication requires a keyStore", connector)
    return context
