"""The one seam between the gateway and a backend, named in DICOMweb words.

A connector answers searches with DICOM JSON datasets and retrievals with streams of DICOM
Part 10 objects. It maps its library's errors to the gateway's at its boundary (`boundary`),
naming itself. Views and the engine never see SQLAlchemy, pynetdicom or requests.
"""

from __future__ import annotations

import contextlib
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from ..dicomjson import JsonDataset
from ..errors import ConnectorError, ConnectorTimeout, GatewayError
from ..query import SearchQuery


@dataclass(frozen=True)
class ResourceRef:
    """A study, a series or an instance, by UIDs (validated before they get here)."""

    study: str
    series: str | None = None
    instance: str | None = None
    #: the instance's SOP Class UID as a search found it: a hint a connector may use to skip
    #: a look-up of its own (the DIMSE connector's C-FIND before a C-GET), never a proof that
    #: the instance exists; not part of the reference's identity
    sop_class: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.instance is not None and self.series is None:
            raise ValueError("an instance reference needs its series")

    @property
    def level(self) -> str:
        return "IMAGE" if self.instance else "SERIES" if self.series else "STUDY"


@dataclass(frozen=True)
class Capabilities:
    """What a connector does itself; the engine works around what it does not."""

    relational: bool = True  # /series and /instances without a study UID
    fuzzy: bool = False  # case-insensitive person-name matching
    uid_lists: bool = True
    #: retrieves an instance faster given its SOP class (`ResourceRef.sop_class`), which the
    #: engine then learns from a look-up search before retrieving
    hinted: bool = False


@dataclass(frozen=True)
class SearchResult:
    """A connector's answer to a search. `unmatched` lists the tags the connector could not
    match on (the engine filters those in memory); `complete` is False when the connector
    stopped at `query.offset + query.limit` answers and more remain."""

    datasets: list[JsonDataset]
    unmatched: frozenset[int] = frozenset()
    complete: bool = True
    warnings: tuple[str, ...] = field(default=())


@dataclass(frozen=True)
class Part10:
    """One retrieved instance: its Part 10 bytes and the transfer syntax they are encoded in."""

    data: bytes
    transfer_syntax: str
    sop_instance_uid: str = ""


class Connector(Protocol):
    id: str
    capabilities: Capabilities

    def search(self, query: SearchQuery) -> SearchResult:
        """Answers matching `query`, at most `query.limit` after skipping `query.offset`."""
        ...

    def retrieve_metadata(self, ref: ResourceRef, bulk_base: str) -> list[JsonDataset]:
        """The full attributes of every instance under `ref`, binary values as BulkDataURIs
        under `bulk_base` + `/studies/{s}/series/{se}/instances/{i}/bulk/{tag}`. Raises NotFound."""
        ...

    def retrieve_instances(
        self, ref: ResourceRef, transfer_syntax: str
    ) -> Generator[Part10, None, None]:
        """Streams the instances under `ref`; `transfer_syntax` "*" means as stored. Raises
        NotFound before the first object when nothing is there. Closing the generator early
        releases the backend (aborts the association, closes the upstream response)."""
        ...

    def check(self) -> None:
        """Raises ConnectorError when the backend cannot be reached (readiness)."""
        ...

    def close(self) -> None: ...


@contextlib.contextmanager
def boundary(connector: str, what: str) -> Iterator[None]:
    """Maps foreign exceptions to the gateway's, naming the connector. Library-specific
    connectors wrap this with their own mapping; socket time-outs and OS errors are common."""
    try:
        yield
    except GatewayError:
        raise
    except TimeoutError as exc:
        raise ConnectorTimeout(f"{what} timed out", connector) from exc
    except OSError as exc:
        raise ConnectorError(f"{what} failed: {type(exc).__name__}", connector) from exc
