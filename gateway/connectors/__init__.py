"""Connector construction: one connector object per configured archive."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..settings import ConnectorSettings, Settings
from .base import Connector

if TYPE_CHECKING:
    from .storescp import StorageScp


def build_connector(
    connector: ConnectorSettings, settings: Settings, storage_scp: StorageScp | None = None
) -> Connector:
    """The connector of `connector.type`; imported here so that nothing connects at import."""
    if connector.type == "DB":
        from .db import DbConnector

        return DbConnector(connector, settings.oidc_client)
    if connector.type == "DICOM":
        from .dimse import DimseConnector

        return DimseConnector(connector, storage_scp=storage_scp)
    from .dicomweb import DicomWebConnector

    return DicomWebConnector(connector, settings.oidc_client)
