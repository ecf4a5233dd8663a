"""What every measurement needs: the scale, the archive, the servers and where to send requests."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

from .archive import ArchiveInfo, SeriesInfo
from .backends import Backends
from .scale import Scale
from .served import Gunicorn

DIRECT = "direct"  # Orthanc's own DICOMweb, the baseline of every ratio
RELAY = "relay"  # bench.relay: Orthanc's DICOMweb through a gunicorn that only forwards bytes


@dataclass
class Bench:
    scale: Scale
    archive: ArchiveInfo
    backends: Backends
    gateway: Gunicorn
    started: float = field(default_factory=time.monotonic)  # for the progress lines
    relay: Gunicorn | None = None  # bench.relay in front of Orthanc, for measurement 3

    def base(self, way: str) -> str:
        """The DICOMweb root a way is reached at: Orthanc's, or the gateway's for a connector."""
        if way == DIRECT:
            return self.backends.orthanc.dicomweb_url
        if way == RELAY:
            assert self.relay is not None
            return self.relay.url
        return f"{self.gateway.url}/archives/{way}/dicomweb"

    def say(self, text: str) -> None:
        """Progress on stderr (the table goes to stdout)."""
        print(
            f"[bench {time.monotonic() - self.started:7.1f} s] {text}", file=sys.stderr, flush=True
        )

    # resources ----------------------------------------------------------------------------

    def search_params(self, first: int) -> str:
        """A study search (StudyDate range and the description a study list shows) matching
        exactly `scale.search_hits` studies, from search study `first` on."""
        window = self.archive.search_window(first, self.scale.search_hits)
        return f"StudyDate={window}&includefield=00081030"

    @property
    def fresh_window(self) -> int:
        """The first study of the window the cold and warm searches use."""
        return 0

    @property
    def other_window(self) -> int:
        """A window that is not `fresh_window`, for warming code paths before cold runs."""
        return self.scale.search_studies - self.scale.search_hits

    @staticmethod
    def series_path(series: SeriesInfo) -> str:
        return f"/studies/{series.study}/series/{series.series}"

    def frame_path(self, series: SeriesInfo, index: int) -> str:
        return f"{self.series_path(series)}/instances/{series.instances[index]}/frames/1"
