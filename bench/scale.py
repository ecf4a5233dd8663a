"""How big the archive is and how often each measurement repeats: full run and smoke run."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Scale:
    """Sizes of one run. `runs` is N of the medians; `warm` the warm requests per run."""

    name: str
    search_studies: int  # small studies (search, the mix's metadata and frames)
    search_instances: int  # instances per small study
    search_hits: int  # studies one QIDO search returns
    big_series: int  # instances of the series for metadata, retrieval and frames
    big_rest: int  # instances of the big study's second series (study >= 1 GiB in full)
    runs: int
    warm: int  # warm requests per run (search, metadata)
    frames: int  # single-frame requests per run
    stream_clients: int  # concurrent clients of the memory measurement
    mix_clients: int
    mix_requests: int  # measured requests of the mix (after a warm-up pass)

    @property
    def big_study_instances(self) -> int:
        return self.big_series + self.big_rest


def full(runs: int) -> Scale:
    """The issue's sizes: 200 studies of 3 instances (100 per search), a 1,000-instance
    series, a study of 2,100 instances (1.1 GB), 8 streaming clients, 16 mix clients."""
    return Scale(
        name="full",
        search_studies=200,
        search_instances=3,
        search_hits=100,
        big_series=1000,
        big_rest=1100,
        runs=runs,
        warm=5,
        frames=10,
        stream_clients=8,
        mix_clients=16,
        mix_requests=800,
    )


def smoke() -> Scale:
    """A few instances: every measurement once, in seconds."""
    return Scale(
        name="smoke",
        search_studies=4,
        search_instances=1,
        search_hits=2,
        big_series=4,
        big_rest=2,
        runs=1,
        warm=2,
        frames=2,
        stream_clients=8,
        mix_clients=16,
        mix_requests=32,
    )
