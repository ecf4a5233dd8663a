"""The gateway's errors. Every failure a client can see is one of these, turned into a JSON body
`{"status": ..., "error": ..., "connector": ...}` by the one handler that `create_app` registers.

    GatewayError                   500, base class
    +-- BadRequest                 400, a parameter is missing or malformed (names it)
    +-- Unauthorized               401, a credential the route needs is missing or wrong
    +-- NotFound                   404, no connector holds the resource
    +-- NotAcceptable              406, no acceptable media type or transfer syntax
    +-- ConnectorError             502, a backend failed (names the connector)
    |   +-- ConnectorTimeout       504, a backend did not answer in time
    |   +-- PartialRetrieval       raised after the objects a retrieval did get (206 + Warning)
    +-- AllConnectorsFailed        502 or 504, every connector asked failed

Connectors map their library's exceptions to `ConnectorError` / `ConnectorTimeout` at their
boundary (see `connectors.base.boundary`). Messages never carry credentials or patient data.
"""

from __future__ import annotations

from collections.abc import Sequence


class GatewayError(Exception):
    status = 500
    headers: tuple[tuple[str, str], ...] = ()

    def __init__(self, message: str, connector: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.connector = connector

    def to_json(self) -> dict[str, object]:
        body: dict[str, object] = {"status": self.status, "error": self.message}
        if self.connector is not None:
            body["connector"] = self.connector
        return body


class BadRequest(GatewayError):
    status = 400

    def __init__(self, message: str, parameter: str | None = None) -> None:
        super().__init__(message)
        self.parameter = parameter

    def to_json(self) -> dict[str, object]:
        body = super().to_json()
        if self.parameter is not None:
            body["parameter"] = self.parameter
        return body


class Unauthorized(GatewayError):
    status = 401
    headers = (("WWW-Authenticate", 'Bearer realm="dicomweb-gateway"'),)  # RFC 6750 3


class NotFound(GatewayError):
    status = 404


class NotAcceptable(GatewayError):
    status = 406


class ConnectorError(GatewayError):
    status = 502

    def __init__(self, message: str, connector: str) -> None:
        super().__init__(message, connector)


class ConnectorTimeout(ConnectorError):
    status = 504


class PartialRetrieval(ConnectorError):
    """A retrieval got some of the objects under the reference but not all (for a C-GET or
    C-MOVE, failed sub-operations). Raised after the objects received."""


class AllConnectorsFailed(GatewayError):
    """Every connector asked failed: 504 when all of them timed out, else 502."""

    def __init__(self, errors: Sequence[ConnectorError]) -> None:
        names = ", ".join(e.connector or "?" for e in errors)
        detail = "; ".join(f"{e.connector}: {e.message}" for e in errors)
        super().__init__(f"no connector answered ({detail})", names)
        self.errors = tuple(errors)
        self.status = 504 if all(isinstance(e, ConnectorTimeout) for e in errors) else 502
