"""DICOMweb gateway: one QIDO-RS / WADO-RS endpoint over DB, DICOM and DICOM_WEB archives."""

from __future__ import annotations

import atexit
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

from .engine import Backend, Engine
from .metrics import Metrics
from .settings import ConnectorSettings, Settings

if TYPE_CHECKING:
    from .connectors.base import Connector
    from .connectors.storescp import StorageScp
    from .weasis_build import ManifestBuilder
    from .weasis_store import ManifestStore

log = logging.getLogger("gateway")


@dataclass
class Gateway:
    """What the blueprints share: the settings and the engine over the built connectors, the
    storage SCP that C-MOVE retrievals receive on, and Weasis's manifest builder and store."""

    settings: Settings
    engine: Engine
    storage_scp: StorageScp | None = None
    metrics: Metrics = field(default_factory=Metrics)
    weasis: ManifestBuilder = field(init=False)
    manifests: ManifestStore = field(init=False)

    def __post_init__(self) -> None:
        from .weasis_build import ManifestBuilder
        from .weasis_store import ManifestStore

        options = self.settings.gateway.weasis
        self.weasis = ManifestBuilder(self.settings, self.engine)
        self.manifests = ManifestStore(options.store_dir, options.manifest_lifetime)

    @property
    def max_results(self) -> int:
        return self.settings.gateway.max_results

    def close(self) -> None:
        self.engine.close()
        if self.storage_scp is not None:
            self.storage_scp.stop()


def _start_storage_scp(settings: Settings) -> StorageScp | None:
    """The storage SCP that C-MOVE retrievals arrive on, when `gateway.storage-scp` is set."""
    options = settings.gateway.storage_scp
    if options is None:
        return None
    from .connectors.storescp import StorageScp

    scp = StorageScp(options, settings.gateway.timeouts)
    scp.start()
    return scp


def _cache(
    settings: Settings, metrics: Metrics
) -> Callable[[Connector, ConnectorSettings], Connector]:
    """Wraps a connector in the metadata cache its settings ask for (none with `ttl: 0`)."""
    from .cache import CachedConnector
    from .cache_store import Flights, MemoryNamespace, Namespace, RedisNamespace

    options = settings.gateway.cache
    flights = Flights()
    client = None
    if options.backend == "redis" and options.redis_url:
        import redis

        client = redis.Redis.from_url(
            options.redis_url, socket_timeout=0.5, socket_connect_timeout=0.5
        )

    def wrap(connector: Connector, c: ConnectorSettings) -> Connector:
        bounds = c.cache or options.bounds
        if bounds.ttl <= 0:
            return connector
        space: Namespace = (
            RedisNamespace(client, f"{options.key_prefix}:{c.id}", bounds.ttl)
            if client is not None
            else MemoryNamespace(bounds.ttl, bounds.max_bytes)
        )
        return CachedConnector(connector, space, flights, c.timeouts.request, metrics)

    return wrap


def _quiet_pydicom() -> None:
    """pydicom's validation warnings quote the offending value (a UID, a patient's sex):
    values an archive sends are passed on as they are, so they are not validated, nor logged."""
    import pydicom.config

    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    pydicom.config.settings.writing_validation_mode = pydicom.config.IGNORE


def create_app(settings: Settings | None = None) -> Flask:
    """The application factory. Without `settings`, loads the file named by GATEWAY_CONFIG
    (default `config/gateway.yml`); builds the demo archive when configured."""
    from . import web
    from .config import load_settings
    from .connectors import build_connector
    from .views import admin, frames, ops, qido, rendered, wado, wado_uri, weasis

    if settings is None:
        settings = load_settings()
    _quiet_pydicom()
    if settings.gateway.demo_archive is not None:
        from .demo import ensure_demo_archive

        ensure_demo_archive(settings.gateway.demo_archive.directory)
    scp = _start_storage_scp(settings)
    metrics = Metrics()
    cached = _cache(settings, metrics)
    backends = [
        Backend(cached(build_connector(c, settings, scp), c), c) for c in settings.connectors
    ]
    gw = Gateway(settings, Engine(backends), scp, metrics)
    log.info(
        "connectors: %s; default: %s", [c.id for c in settings.connectors], list(settings.default)
    )

    app = Flask(__name__)
    app.extensions["gateway"] = gw
    if settings.gateway.trust_proxy:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=1, x_proto=1, x_host=1, x_port=1, x_prefix=1)  # type: ignore[method-assign]
    web.install(app)
    app.register_blueprint(ops.bp)
    app.register_blueprint(weasis.bp)
    app.register_blueprint(admin.bp)
    for blueprint in (qido.bp, wado.bp, frames.bp, rendered.bp):
        app.register_blueprint(blueprint, url_prefix="/dicomweb")
        app.register_blueprint(
            blueprint,
            url_prefix="/archives/<connector_id>/dicomweb",
            name=f"{blueprint.name}_archive",
        )
    app.register_blueprint(wado_uri.bp, url_prefix="/wado")
    app.register_blueprint(
        wado_uri.bp, url_prefix="/archives/<connector_id>/wado", name="wado_uri_archive"
    )
    atexit.register(gw.close)
    return app
