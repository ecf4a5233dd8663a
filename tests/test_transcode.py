"""transcode.deliver: objects re-encoded as asked, checked against pydicom's reading of the
source file (same pixels after decoding, same SOP Instance UID, the asked syntax in the file
meta) and PS3.18 8.7.3.5 (a syntax the gateway cannot produce is a 406)."""

import io
import logging

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate, generate_frames
from pydicom.pixels import apply_color_lut

from gateway.connectors.base import Part10
from gateway.errors import NotAcceptable
from gateway.part10 import DamagedObject
from gateway.transcode import deliver

EVRLE = "1.2.840.10008.1.2.1"
IVRLE = "1.2.840.10008.1.2"
BIG_ENDIAN = "1.2.840.10008.1.2.2"
RLE = "1.2.840.10008.1.2.5"
JLS = "1.2.840.10008.1.2.4.80"
J2K_LOSSLESS = "1.2.840.10008.1.2.4.90"
J2K = "1.2.840.10008.1.2.4.91"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"


def part_of(name):
    path = get_testdata_file(name)
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return Part10(open(path, "rb").read(), str(ds.file_meta.TransferSyntaxUID), ds.SOPInstanceUID)


def source(name):
    return pydicom.dcmread(get_testdata_file(name))


DECODED = [  # every compressed syntax of the samples, lossless and lossy, to both LE syntaxes
    (name, target)
    for name in (
        "examples_ybr_color.dcm",  # JPEG baseline, YBR_FULL_422, 30 frames
        "SC_rgb_jpeg_dcmtk.dcm",  # JPEG baseline, YBR_FULL
        "JPGLosslessP14SV1_1s_1f_8b.dcm",  # JPEG lossless SV1
        "JPEG-LL.dcm",  # JPEG lossless SV1, 16-bit
        "SC_rgb_rle.dcm",
        "emri_small_RLE.dcm",  # 10 frames
        "MR_small_jpeg_ls_lossless.dcm",
        "emri_small_jpeg_ls_lossless.dcm",
        "JPEGLSNearLossless_16.dcm",
        "693_J2KI.dcm",
        "US1_J2KR.dcm",  # JPEG 2000 lossless, YBR_RCT colour
        "emri_small_jpeg_2k_lossless.dcm",
    )
    for target in (EVRLE, IVRLE)
]


@pytest.mark.parametrize(("name", "target"), DECODED)
def test_compressed_to_uncompressed_keeps_the_pixels(name, target):
    part = part_of(name)
    out = deliver(part, target)
    got = pydicom.dcmread(io.BytesIO(out.data))
    expected = source(name)
    assert out.transfer_syntax == target and got.file_meta.TransferSyntaxUID == target
    assert got.SOPInstanceUID == expected.SOPInstanceUID == out.sop_instance_uid
    assert np.array_equal(got.pixel_array, expected.pixel_array)
    assert got.get("PatientID") == expected.get("PatientID") and got.Rows == expected.Rows
    frames = int(expected.get("NumberOfFrames", 1) or 1)
    size = expected.Rows * expected.Columns * expected.SamplesPerPixel * expected.BitsAllocated // 8
    assert len(got.PixelData) == size * frames + (size * frames) % 2


def test_ycbcr_jpeg_is_decoded_to_rgb():
    got = pydicom.dcmread(io.BytesIO(deliver(part_of("examples_ybr_color.dcm"), EVRLE).data))
    assert got.PhotometricInterpretation == "RGB" and got.PlanarConfiguration == 0


ENCODED = [
    ("CT_small.dcm", RLE), ("CT_small.dcm", JLS), ("CT_small.dcm", J2K_LOSSLESS),
    ("emri_small.dcm", RLE), ("emri_small.dcm", JLS), ("emri_small.dcm", J2K_LOSSLESS),
    ("SC_rgb_jpeg_dcmtk.dcm", RLE),  # lossy source decoded, then encoded without more loss
    ("SC_rgb_rle.dcm", J2K_LOSSLESS),
    ("MR_small_bigendian.dcm", RLE),
]


@pytest.mark.parametrize(("name", "target"), ENCODED)
def test_encoding_into_lossless_syntaxes_keeps_the_pixels(name, target):
    out = deliver(part_of(name), target)
    got = pydicom.dcmread(io.BytesIO(out.data))
    expected = source(name)
    assert got.file_meta.TransferSyntaxUID == target and out.transfer_syntax == target
    assert got.SOPInstanceUID == expected.SOPInstanceUID
    assert np.array_equal(got.pixel_array, expected.pixel_array)
    count = int(expected.get("NumberOfFrames", 1) or 1)
    assert len(list(generate_frames(got.PixelData, number_of_frames=count))) == count


@pytest.mark.parametrize(
    ("name", "target"),
    [
        ("MR_small_bigendian.dcm", EVRLE),
        ("emri_small_big_endian.dcm", IVRLE),
        ("rtdose_expb.dcm", EVRLE),  # 32-bit values
        ("SC_rgb_expb_2frame.dcm", EVRLE),
        ("OBXXXX1A_expb_2frame.dcm", EVRLE),  # 8-bit values in OW words
        ("SC_rgb_small_odd_big_endian.dcm", IVRLE),
        ("liver_expb_1frame.dcm", EVRLE),
        ("rtdose.dcm", EVRLE),
        ("CT_small.dcm", IVRLE),
        ("image_dfl.dcm", EVRLE),  # deflated
    ],
)
def test_between_uncompressed_syntaxes_keeps_the_pixels(name, target):
    out = deliver(part_of(name), target)
    got = pydicom.dcmread(io.BytesIO(out.data))
    expected = source(name)
    assert got.file_meta.TransferSyntaxUID == target
    assert np.array_equal(got.pixel_array, expected.pixel_array)
    assert got.SOPInstanceUID == expected.SOPInstanceUID
    assert got.get("ImagePositionPatient") == expected.get("ImagePositionPatient")


@pytest.mark.parametrize("name", ["CT_small.dcm", "examples_ybr_color.dcm"])
def test_star_and_the_stored_syntax_return_the_object_unchanged(name):
    part = part_of(name)
    assert deliver(part, "*") is part
    assert deliver(part, part.transfer_syntax) is part


@pytest.mark.parametrize(
    ("name", "target"),
    [
        ("CT_small.dcm", JPEG_BASELINE),  # lossy: the gateway does not add loss
        ("CT_small.dcm", J2K),
        ("CT_small.dcm", "1.2.840.10008.1.2.4.81"),
        ("CT_small.dcm", BIG_ENDIAN),  # retired: never produced
        ("CT_small.dcm", "1.2.3.4"),
        ("examples_ybr_color.dcm", "1.2.840.10008.1.2.4.70"),  # no JPEG lossless encoder
        ("JPEG-lossy.dcm", EVRLE),  # 12-bit JPEG extended: only GPL libjpeg decodes it
        ("liver.dcm", RLE),  # 1-bit: no RLE encoding of packed bits
        ("rtdose.dcm", JLS),  # 32-bit: JPEG-LS holds at most 16 bits (ISO 14495-1)
    ],
)
def test_what_cannot_be_produced_is_406(name, target):
    with pytest.raises(NotAcceptable) as err:
        deliver(part_of(name), target)
    assert err.value.status == 406


def test_a_plugin_that_fails_is_logged_at_debug_without_a_traceback(caplog):
    # pydicom logs each failing plugin as an ERROR with a traceback: a 406 is not an error of
    # the gateway's, so only its own DEBUG line names the plugin
    caplog.set_level(logging.DEBUG)
    with pytest.raises(NotAcceptable):
        deliver(part_of("rtdose.dcm"), J2K_LOSSLESS)  # 32-bit: no JPEG 2000 encoder takes it
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    failures = [r.getMessage() for r in caplog.records if r.name == "gateway.transcode"]
    assert failures and all(m.startswith("pixel data plugin ") for m in failures)


def test_truncated_native_pixel_data_is_a_damaged_object():
    with pytest.raises(DamagedObject) as err:
        deliver(part_of("MR_truncated.dcm"), IVRLE)
    assert err.value.status == 502


def test_undecodable_compressed_pixel_data_is_a_damaged_object():
    ds = source("693_J2KI.dcm")
    codestream = next(generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = encapsulate([codestream[:200]])
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    with pytest.raises(DamagedObject):
        deliver(Part10(out.getvalue(), J2K, ds.SOPInstanceUID), EVRLE)


def test_an_object_without_pixel_data_changes_only_its_encoding():
    ds = source("rtplan.dcm")
    ds.file_meta.TransferSyntaxUID = JPEG_BASELINE  # legal: the syntax only shapes pixel data
    data = io.BytesIO()
    ds.save_as(data, enforce_file_format=True)
    out = deliver(Part10(data.getvalue(), JPEG_BASELINE, ds.SOPInstanceUID), EVRLE)
    got = pydicom.dcmread(io.BytesIO(out.data))
    assert got.file_meta.TransferSyntaxUID == EVRLE
    assert got.BeamSequence[0].BeamName == ds.BeamSequence[0].BeamName


@pytest.mark.parametrize(
    ("name", "twin"),
    [("OBXXXX1A_expb_2frame.dcm", "OBXXXX1A_2frame.dcm"),
     ("gdcm-US-ALOKA-16_big.dcm", "gdcm-US-ALOKA-16.dcm")],
)
def test_big_endian_palette_lookup_tables_are_swapped_too(name, twin):
    """Ground truth: the same image in pydicom's test set in a little-endian syntax (pydicom's
    apply_color_lut reads big-endian LUT data as if it were little endian)."""
    got = pydicom.dcmread(io.BytesIO(deliver(part_of(name), EVRLE).data))
    expected = source(twin)
    assert np.array_equal(apply_color_lut(got.pixel_array, got),
                          apply_color_lut(expected.pixel_array, expected))
