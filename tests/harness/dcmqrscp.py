"""dcmtk's dcmqrscp (Debian package `dcmtk`) as an independent legacy DIMSE PACS.

Our own dcmqrscp.cfg (shared/reference/testbed.md §2), never Debian's sample (it has
UserName/GroupName dcmtk and port 104). Traps respected here:
- fork mode only: `--single-process` segfaults after the first association (dcmtk 3.6.7);
- TCP_NODELAY=1 in the environment of dcmqrscp and of storescu/echoscu;
- at most 500 studies per storage area (older ones are deleted past the quota).
dcmqrscp has no option to bind to one interface (its CLI has only the port): it listens on all
interfaces, and the tests only send traffic to 127.0.0.1.

Objects are stored exactly as loaded (storescu proposes each file's own transfer syntax), so
dcmqrscp holds the samples in the syntaxes `samples.sample_index()` reports. Retrieval limits,
checked against dcmqrscp 3.6.7 (a property of the real backend, which the gateway must cope with):
dcmqrscp has no codecs, and for each object it uses the FIRST accepted presentation context of
the object's SOP class, whatever its transfer syntax. So
- C-GET succeeds when the requestor's accepted context for each SOP class carries the stored
  syntax (e.g. one context per SOP class holding only that syntax); an object whose syntax differs
  from that context's fails (status A702 / B000, "unable to convert"), e.g. SC_rgb_rle.dcm and
  SC_rgb_jpeg_dcmtk.dcm (same series, same SOP class, RLE vs JPEG) cannot both come in one
  association;
- C-MOVE (profile "Outgoing" below: uncompressed context first for each class) delivers the
  uncompressed samples (CT_small, MR_small, rtdose, emri_small, liver); the compressed ones fail.
Uncompressed objects are converted between explicit and implicit VR as needed.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pynetdicom import StoragePresentationContexts

from .ports import free_port
from .procs import (
    HarnessError,
    log_tail,
    require_executable,
    run_tool,
    spawn,
    stop_process,
    wait_until,
)

DCMQRSCP_BIN = "/usr/bin/dcmqrscp"
STORESCU_BIN = "/usr/bin/storescu"  # absolute: pynetdicom's apps may shadow the name on PATH
ECHOSCU_BIN = "/usr/bin/echoscu"
LOADER_AET = "LOADER"
STORE_TIMEOUT = 120.0

# Transfer syntaxes (PS3.5 Annex A / PS3.6 Table A-1). dcmqrscp never transcodes compressed data,
# so it must accept every syntax we store and propose each one in a presentation context of its
# own when it sends (C-MOVE sub-associations).
UNCOMPRESSED_TS = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")  # explicit / implicit VR LE
COMPRESSED_TS = (
    "1.2.840.10008.1.2.4.50",  # JPEG baseline (process 1)
    "1.2.840.10008.1.2.4.51",  # JPEG extended (process 2 & 4)
    "1.2.840.10008.1.2.4.57",  # JPEG lossless, non-hierarchical (process 14)
    "1.2.840.10008.1.2.4.70",  # JPEG lossless, first-order prediction (process 14 SV1)
    "1.2.840.10008.1.2.4.80",  # JPEG-LS lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS near-lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 lossless only
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.5",  # RLE lossless
)
OTHER_TS = ("1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.2")  # deflated, big endian (retired)
# Image SOP classes proposed with every syntax above in C-MOVE sub-associations (PS3.4 B.5)
IMAGE_CLASSES_OUT = (
    "1.2.840.10008.5.1.4.1.1.1",  # CR
    "1.2.840.10008.5.1.4.1.1.1.1",  # DX for presentation
    "1.2.840.10008.5.1.4.1.1.2",  # CT
    "1.2.840.10008.5.1.4.1.1.2.1",  # Enhanced CT
    "1.2.840.10008.5.1.4.1.1.3.1",  # US multi-frame
    "1.2.840.10008.5.1.4.1.1.4",  # MR
    "1.2.840.10008.5.1.4.1.1.4.1",  # Enhanced MR
    "1.2.840.10008.5.1.4.1.1.6.1",  # US
    "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture
    "1.2.840.10008.5.1.4.1.1.7.4",  # Multi-frame true color SC
    "1.2.840.10008.5.1.4.1.1.12.1",  # XA
)
# Non-image SOP classes proposed uncompressed only in C-MOVE sub-associations
OTHER_CLASSES_OUT = (
    "1.2.840.10008.5.1.4.1.1.481.2",  # RT Dose (may hold pixel data, sent uncompressed)
    "1.2.840.10008.5.1.4.1.1.66.4",  # Segmentation
    "1.2.840.10008.5.1.4.1.1.88.11",  # Basic Text SR
    "1.2.840.10008.5.1.4.1.1.88.22",  # Enhanced SR
    "1.2.840.10008.5.1.4.1.1.88.33",  # Comprehensive SR
    "1.2.840.10008.5.1.4.1.1.88.59",  # Key Object Selection
    "1.2.840.10008.5.1.4.1.1.11.1",  # Grayscale Softcopy Presentation State
    "1.2.840.10008.5.1.4.1.1.481.3",  # RT Structure Set
    "1.2.840.10008.5.1.4.1.1.481.5",  # RT Plan
    "1.2.840.10008.5.1.4.1.1.104.1",  # Encapsulated PDF
)
MAX_CONTEXTS = 128  # PS3.8 9.3.2.2: presentation context IDs are odd numbers 1..255


@dataclass
class Dcmqrscp:
    """A running dcmqrscp: Q/R SCP (C-FIND/C-GET/C-MOVE) and storage SCP on `port`."""

    port: int
    aet: str
    workdir: Path
    process: subprocess.Popen[bytes] = field(repr=False)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def log_path(self) -> Path:
        return self.workdir / "dcmqrscp.log"

    def load(self, paths: Iterable[Path]) -> None:
        """C-STORE the files (directories: their *.dcm files, recursively) with dcmtk's
        storescu, each in its own transfer syntax (one presentation context per SOP class and
        syntax, so nothing is transcoded). Raises HarnessError if storescu fails or if a
        store is not answered Success."""
        files = _expand(paths)
        if not files:
            return
        profile = self.workdir / "load-profile.cfg"
        profile.write_text(load_profile(files))
        argv: list[str | Path] = [
            require_executable(STORESCU_BIN, "dcmtk"), "-v", "-xf", profile, "Load",
            "-aet", LOADER_AET, "-aec", self.aet, "-to", "5", "-ta", "10", "-td", "60",
            "127.0.0.1", str(self.port), *files,
        ]
        done = run_tool(argv, timeout=STORE_TIMEOUT)
        output = done.stdout + done.stderr
        stored = len(re.findall(r"Received Store Response \(Success\)", output))
        if done.returncode != 0 or stored != len(files):
            raise HarnessError(
                f"storescu exited with {done.returncode}, {stored}/{len(files)} stored\n"
                + "\n".join(output.splitlines()[-30:]) + "\n" + log_tail(self.log_path)
            )

    def stop(self) -> int | None:
        """SIGTERM by PID, wait, SIGKILL if needed; then reap forked workers. Exit code."""
        return stop_process(self.process)


def _expand(paths: Iterable[Path]) -> list[Path]:
    files: list[Path] = []
    for path in map(Path, paths):
        files.extend(sorted(path.rglob("*.dcm")) if path.is_dir() else [path])
    return [f.resolve() for f in files]


def dcmqrscp_config(
    storage: Path,
    *,
    port: int,
    aet: str,
    move_destinations: Mapping[str, tuple[str, int]],
    max_associations: int,
) -> str:
    """dcmqrscp.cfg text. `move_destinations` maps an AE title to (host, port): the C-MOVE
    destinations dcmqrscp knows (HostTable). One RW storage area for `aet`, open to ANY peer,
    quota (500 studies, 1024 MB per study)."""
    if re.search(r"\s", str(storage)):
        raise HarnessError(f"dcmqrscp storage path must not contain spaces: {storage}")
    hosts = [
        f"{_symbolic(dest)} = ({dest}, {host}, {dest_port})"
        for dest, (host, dest_port) in move_destinations.items()
    ]
    return "\n".join([
        f"NetworkTCPPort  = {port}",
        "MaxPDUSize      = 16384",
        f"MaxAssociations = {max_associations}",
        "",
        "HostTable BEGIN", *hosts, "HostTable END",
        "",
        "VendorTable BEGIN", "VendorTable END",
        "",
        "AETable BEGIN",
        f"{aet}  {storage}  RW  (500, 1024mb)  ANY",
        "AETable END",
        "",
    ])


def association_profiles() -> str:
    """dcmqrscp's association negotiation profiles (dcmtk's asconfig format, option -xf).

    "Incoming": every storage SOP class of pynetdicom's StoragePresentationContexts with any
    transfer syntax above, and both roles, so that storescu stores compressed objects as they
    are and a C-GET requestor (SCP role, PS3.7 D.3.3.4) gets its contexts accepted.
    "Outgoing" (C-MOVE sub-associations): one presentation context per (image class, syntax),
    uncompressed only for the other classes."""
    incoming = [str(cx.abstract_syntax) for cx in StoragePresentationContexts]
    single = {ts: f"TS_{n}" for n, ts in enumerate(COMPRESSED_TS)}
    outgoing = [f"{uid}\\{group}" for uid in IMAGE_CLASSES_OUT
                for group in ("Uncompressed", *single.values())]
    outgoing += [f"{uid}\\Uncompressed" for uid in OTHER_CLASSES_OUT]
    if max(len(incoming), len(outgoing)) > MAX_CONTEXTS:
        raise HarnessError("too many presentation contexts for one association")
    lines = ["[[TransferSyntaxes]]", "[Any]"]
    lines += _numbered("TransferSyntax", UNCOMPRESSED_TS + COMPRESSED_TS + OTHER_TS)
    lines += ["[Uncompressed]", *_numbered("TransferSyntax", UNCOMPRESSED_TS)]
    for ts, name in single.items():
        lines += [f"[{name}]", *_numbered("TransferSyntax", (ts,))]
    lines += ["[[PresentationContexts]]", "[IncomingContexts]"]
    lines += _numbered("PresentationContext", [f"{uid}\\Any" for uid in incoming])
    lines += ["[OutgoingContexts]", *_numbered("PresentationContext", outgoing)]
    lines += ["[[SCPSCURoleSelection]]", "[BothRoles]"]
    lines += _numbered("Role", [f"{uid}\\BOTH" for uid in incoming])
    lines += ["[[Profiles]]", "[Incoming]", "PresentationContexts = IncomingContexts",
              "SCPSCURoleSelection = BothRoles", "[Outgoing]",
              "PresentationContexts = OutgoingContexts", ""]
    return "\n".join(lines)


def load_profile(files: Iterable[Path]) -> str:
    """storescu's profile "Load": one presentation context per distinct (SOP class, transfer
    syntax) of `files`, read from their file meta information (PS3.10 7.1)."""
    pairs = sorted({_class_and_syntax(path) for path in files})
    if len(pairs) > MAX_CONTEXTS:
        raise HarnessError(f"{len(pairs)} (SOP class, syntax) pairs: load in several batches")
    syntaxes = sorted({ts for _, ts in pairs})
    names = {ts: f"TS_{n}" for n, ts in enumerate(syntaxes)}
    lines = ["[[TransferSyntaxes]]"]
    for ts, name in names.items():
        lines += [f"[{name}]", f"TransferSyntax1 = {ts}"]
    lines += ["[[PresentationContexts]]", "[LoadContexts]"]
    lines += _numbered("PresentationContext", [f"{sop}\\{names[ts]}" for sop, ts in pairs])
    lines += ["[[Profiles]]", "[Load]", "PresentationContexts = LoadContexts", ""]
    return "\n".join(lines)


def _class_and_syntax(path: Path) -> tuple[str, str]:
    meta = pydicom.filereader.read_file_meta_info(path)
    return str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID)


def _numbered(key: str, values: Iterable[str]) -> list[str]:
    return [f"{key}{n} = {value}" for n, value in enumerate(values, start=1)]


def _symbolic(aet: str) -> str:
    """A HostTable symbolic name for an AE title (lowercase letters, digits, underscores)."""
    return "h_" + re.sub(r"[^a-z0-9]", "_", aet.lower())


def start_dcmqrscp(
    workdir: Path,
    *,
    aet: str = "DCMQRSCP",
    move_destinations: Mapping[str, tuple[str, int]] | None = None,
    max_associations: int = 16,
    timeout: float = 30.0,
) -> Dcmqrscp:
    """Write `workdir`/dcmqrscp.cfg, start dcmqrscp (fork mode, TCP_NODELAY=1,
    --disable-host-lookup) on a free port, and wait until it answers a C-ECHO (echoscu).
    Raises HarnessError with the log's tail on failure."""
    exe = require_executable(DCMQRSCP_BIN, "dcmtk")
    require_executable(ECHOSCU_BIN, "dcmtk")
    workdir = workdir.resolve()
    storage = workdir / "storage" / aet
    storage.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = workdir / "dcmqrscp.cfg"
    config.write_text(dcmqrscp_config(
        storage, port=port, aet=aet, move_destinations=move_destinations or {},
        max_associations=max_associations,
    ))
    profiles = workdir / "profiles.cfg"
    profiles.write_text(association_profiles())
    argv: list[str | Path] = [
        exe, "-c", config, "--fork", "--disable-host-lookup", "-ll", "info",
        "-xf", profiles, "Incoming", "Outgoing",
    ]
    server = Dcmqrscp(port=port, aet=aet, workdir=workdir, process=spawn(
        argv, workdir / "dcmqrscp.log", cwd=workdir))
    try:
        wait_until(
            lambda: _echo(port, aet), proc=server.process, timeout=timeout,
            what=f"dcmqrscp (port {port})", logs=(server.log_path,),
        )
    except BaseException:
        server.stop()
        raise
    return server


def _echo(port: int, aet: str) -> bool:
    """True when a C-ECHO from echoscu (2 s connection timeout) succeeds."""
    argv = [ECHOSCU_BIN, "-to", "2", "-ta", "2", "-td", "2", "-aec", aet, "127.0.0.1", str(port)]
    try:
        return run_tool(argv, timeout=10.0).returncode == 0
    except subprocess.TimeoutExpired:
        return False
