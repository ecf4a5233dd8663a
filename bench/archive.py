"""The generated archive: 512x512 16-bit CT instances cloned from a real sample.

The source is pydicom-data's `693_UNCR.dcm` (a 512x512 CT, Explicit VR Little Endian) or, when
pydicom-data is absent, pydicom's `693_J2KI.dcm` decoded to native pixels. Every clone gets new
UIDs (derived from the seed, so two runs with the same scale produce the same archive), patient,
study and series attributes, an instance number and a slice position.

Layout under `root`:
- `search/NNNN/`: `scale.search_studies` small studies of `scale.search_instances` instances,
  study i dated `SEARCH_DAY0 + i days`, so any window of `scale.search_hits` consecutive days
  matches exactly that many studies (cold runs use fresh windows);
- `big/series1/`: the series of `scale.big_series` instances (metadata, retrieval, frames);
- `big/series2/`: `scale.big_rest` more instances of the same study, so the study passes 1 GiB.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian, generate_uid

from .scale import Scale

SEARCH_DAY0 = dt.date(2024, 1, 1)
BIG_STUDY_DATE = "20200601"
UID_ROOT = "1.2.826.0.1.3680043.8.498."  # pydicom's root (PS3.5 9.1)
BYTES_PER_INSTANCE = 512 * 512 * 2 + 4096  # pixel data plus a header, for the disk check


@dataclass
class SeriesInfo:
    study: str
    series: str
    instances: list[str]
    paths: list[str]
    bytes: int


@dataclass
class ArchiveInfo:
    """What was generated: UIDs, files and sizes (also written to `manifest.json`)."""

    root: str
    source: str
    search: list[SeriesInfo] = field(default_factory=list)
    big_series: SeriesInfo | None = None
    big_rest: SeriesInfo | None = None

    @property
    def big(self) -> SeriesInfo:
        assert self.big_series is not None
        return self.big_series

    @property
    def big_study_bytes(self) -> int:
        rest = self.big_rest.bytes if self.big_rest else 0
        return self.big.bytes + rest

    def search_window(self, first: int, hits: int) -> str:
        """The StudyDate range (PS3.4 C.2.2.2.5) matching search studies first..first+hits-1."""
        start = SEARCH_DAY0 + dt.timedelta(days=first)
        end = start + dt.timedelta(days=hits - 1)
        return f"{start:%Y%m%d}-{end:%Y%m%d}"

    def all_paths(self) -> list[Path]:
        groups = [*self.search, self.big, *([self.big_rest] if self.big_rest else [])]
        return [Path(p) for g in groups for p in g.paths]

    def dcmqrscp_paths(self) -> list[Path]:
        """The subset dcmqrscp holds: every search study and the big series (not the rest of
        the big study: dcmqrscp's flat index stays fast only under ~2000 instances)."""
        return [Path(p) for g in [*self.search, self.big] for p in g.paths]


def needed_bytes(scale: Scale) -> int:
    """Disk the run needs: the files, Orthanc's copy and dcmqrscp's copy of its subset."""
    total = scale.search_studies * scale.search_instances + scale.big_series + scale.big_rest
    subset = scale.search_studies * scale.search_instances + scale.big_series
    return (2 * total + subset) * BYTES_PER_INSTANCE


def check_disk(folder: Path, scale: Scale) -> None:
    """Raise SystemExit when `folder`'s file system has less room than the run needs + 1 GB."""
    free = shutil.disk_usage(folder).free
    need = needed_bytes(scale) + 10**9
    if free < need:
        raise SystemExit(f"{folder}: {free / 1e9:.1f} GB free, the bench needs {need / 1e9:.1f} GB")


def load_source() -> tuple[Dataset, str]:
    """The 512x512 CT template in Explicit VR Little Endian, and the name of its source file."""
    uncompressed = get_testdata_file("693_UNCR.dcm")
    name = "693_UNCR.dcm" if uncompressed else "693_J2KI.dcm"
    path = uncompressed or get_testdata_file(name)
    if path is None:
        raise SystemExit("no 512x512 CT sample found (pip install pydicom-data)")
    ds = pydicom.dcmread(path)
    if ds.file_meta.TransferSyntaxUID != ExplicitVRLittleEndian:
        ds.decompress()  # native pixels, Explicit VR Little Endian
    for elem in [e for e in ds if e.tag.element == 0]:  # group lengths (retired): recomputed
        del ds[elem.tag]
    meta = ds.file_meta
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "DICOMWEB_BENCH"
    if "SourceApplicationEntityTitle" in meta:
        del meta.SourceApplicationEntityTitle
    return ds, name


class _Writer:
    """Writes clones of the template, one attribute set per instance."""

    def __init__(self, template: Dataset, seed: str) -> None:
        self.ds = template
        self.seed = seed

    def uid(self, *parts: object) -> str:
        return str(generate_uid(UID_ROOT, [self.seed, *map(str, parts)]))

    def study(self, key: str, patient: int, date: str, description: str) -> None:
        ds = self.ds
        ds.PatientID = f"BENCH{patient:05d}"
        ds.PatientName = f"BENCH^PATIENT{patient:05d}"
        ds.PatientBirthDate = "19700101"
        ds.PatientSex = "O"
        ds.StudyInstanceUID = self.uid("study", key)
        ds.StudyDate = ds.ContentDate = date
        ds.StudyTime = ds.ContentTime = "101500"
        ds.AccessionNumber = f"A{zlib.crc32(key.encode()) % 10**8:08d}"
        ds.StudyID = key[:16]
        ds.StudyDescription = description

    def series(self, key: str, number: int, description: str) -> None:
        self.ds.SeriesInstanceUID = self.uid("series", key)
        self.ds.FrameOfReferenceUID = self.uid("frame", key)
        self.ds.SeriesNumber = number
        self.ds.SeriesDescription = description

    def instances(self, folder: Path, key: str, count: int) -> SeriesInfo:
        folder.mkdir(parents=True, exist_ok=True)
        ds = self.ds
        sops, paths, size = [], [], 0
        for n in range(1, count + 1):
            sop = self.uid("sop", key, n)
            ds.SOPInstanceUID = sop
            ds.file_meta.MediaStorageSOPInstanceUID = UID(sop)
            ds.InstanceNumber = n
            z = -0.625 * n
            ds.ImagePositionPatient = [-122.5, -112.4, z]
            ds.SliceLocation = z
            path = folder / f"{n:05d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            sops.append(sop)
            paths.append(str(path))
            size += path.stat().st_size
        return SeriesInfo(str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), sops, paths, size)


def generate(root: Path, scale: Scale, seed: str = "bench-1") -> ArchiveInfo:
    """Write the archive under `root` (emptied first) and its manifest.json."""
    if root.exists():
        shutil.rmtree(root)
    template, source = load_source()
    writer = _Writer(template, f"{seed}-{scale.name}")
    info = ArchiveInfo(root=str(root), source=source)
    for i in range(scale.search_studies):
        date = (SEARCH_DAY0 + dt.timedelta(days=i)).strftime("%Y%m%d")
        writer.study(f"search{i}", i // 2, date, f"Bench head CT {i}")
        writer.series(f"search{i}", 1, "Axial 5 mm")
        key = f"search{i}-1"
        info.search.append(
            writer.instances(root / "search" / f"{i:04d}", key, scale.search_instances)
        )
    writer.study("big", 99999, BIG_STUDY_DATE, "Bench large CT study")
    writer.series("big-1", 1, "Thin axial 0.625 mm")
    info.big_series = writer.instances(root / "big" / "series1", "big-1", scale.big_series)
    writer.series("big-2", 2, "Thin axial 0.625 mm, second pass")
    info.big_rest = writer.instances(root / "big" / "series2", "big-2", scale.big_rest)
    (root / "manifest.json").write_text(json.dumps(asdict(info), indent=1))
    return info


def iter_sizes(info: ArchiveInfo) -> Iterator[tuple[str, int]]:
    """(label, bytes) of each part of the archive, for the report."""
    yield "search studies", sum(s.bytes for s in info.search)
    yield "big series", info.big.bytes
    yield "big study", info.big_study_bytes
