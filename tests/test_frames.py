"""Frames of an instance (gateway.frames) and their Accept negotiation (negotiation.frame_ranges,
choose_frames), against ground truth: pydicom's decoding of the sample files (frame by frame, as
little-endian bytes; 1-bit frames packed with pydicom's pack_bits), pydicom.encaps'
generate_frames for stored frames, and PS3.18 Table 8.7.3-5 for media types."""

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.pixels.utils import pack_bits

from gateway import frames, part10
from gateway.errors import BadRequest, NotAcceptable
from gateway.negotiation import (
    FrameChoice,
    choose_frames,
    frame_media_type,
    frame_ranges,
)
from gateway.part10 import DamagedObject

OCTET = "application/octet-stream"
EVRLE = "1.2.840.10008.1.2.1"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
JPEG_EXTENDED = "1.2.840.10008.1.2.4.51"
JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"
JLS = "1.2.840.10008.1.2.4.80"
J2K_LOSSLESS = "1.2.840.10008.1.2.4.90"
J2K = "1.2.840.10008.1.2.4.91"
RLE = "1.2.840.10008.1.2.5"
BIG_ENDIAN = "1.2.840.10008.1.2.2"

# (file, transfer syntax, NumberOfFrames) as pydicom reads them; the demo archive's samples
# first, then pydicom's test files for the syntaxes and layouts the demo does not have.
SAMPLES = [
    ("CT_small.dcm", EVRLE, 1),
    ("rtdose.dcm", "1.2.840.10008.1.2", 15),
    ("examples_ybr_color.dcm", JPEG_BASELINE, 30),
    ("emri_small.dcm", EVRLE, 10),
    ("JPGLosslessP14SV1_1s_1f_8b.dcm", JPEG_LOSSLESS_SV1, 1),
    ("SC_rgb_rle.dcm", RLE, 1),
    ("SC_rgb_jpeg_dcmtk.dcm", JPEG_BASELINE, 1),
    ("liver.dcm", EVRLE, 3),
    ("693_J2KI.dcm", J2K, 1),
    ("emri_small_big_endian.dcm", BIG_ENDIAN, 10),
    ("SC_rgb_expb_2frame.dcm", BIG_ENDIAN, 2),
    ("rtdose_expb.dcm", BIG_ENDIAN, 15),
    ("OBXXXX1A_expb_2frame.dcm", BIG_ENDIAN, 2),  # 8-bit values in OW words
    ("SC_rgb_small_odd_big_endian.dcm", BIG_ENDIAN, 1),  # 8-bit OW, odd length
    ("liver_expb_1frame.dcm", BIG_ENDIAN, 1),  # 1-bit
    ("image_dfl.dcm", "1.2.840.10008.1.2.1.99", 1),
    ("emri_small_RLE.dcm", RLE, 10),
    ("rtdose_rle.dcm", RLE, 15),
    ("SC_rgb_rle_16bit_2frame.dcm", RLE, 2),
    ("emri_small_jpeg_ls_lossless.dcm", JLS, 10),
    ("emri_small_jpeg_2k_lossless.dcm", J2K_LOSSLESS, 10),
    ("JPEG-LL.dcm", JPEG_LOSSLESS_SV1, 1),
]


def path_of(name):
    return get_testdata_file(name)


def expected_pixels(source, number):
    """Frame `number` of pydicom's decoding of the whole object, as the bytes of native
    little-endian data (1-bit data packed, PS3.5 8.1.1)."""
    ds = pydicom.dcmread(source)
    array = ds.pixel_array
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        array = array[number - 1]
    if ds.BitsAllocated == 1:
        return pack_bits(array)
    return array.astype(array.dtype.newbyteorder("<")).tobytes()


def expected_stored(source, number):
    ds = pydicom.dcmread(source)
    count = int(ds.get("NumberOfFrames", 1) or 1)
    return list(generate_frames(ds.PixelData, number_of_frames=count))[number - 1]


def image_of(name):
    return frames.open_image(open(path_of(name), "rb").read())


@pytest.mark.parametrize(("name", "syntax", "count"), SAMPLES)
def test_the_image_reads_syntax_and_frame_count(name, syntax, count):
    image = image_of(name)
    assert (image.transfer_syntax, image.count) == (syntax, count)
    assert image.can_decode


@pytest.mark.parametrize(("name", "syntax", "count"), SAMPLES)
def test_every_frame_decodes_to_pydicoms_pixels(name, syntax, count):
    image = image_of(name)
    for number in range(1, count + 1):
        assert frames.frame(image, number, True) == expected_pixels(path_of(name), number), number


COMPRESSED = {JPEG_BASELINE, JPEG_LOSSLESS_SV1, RLE, JLS, J2K_LOSSLESS, J2K}


@pytest.mark.parametrize(("name", "count"), [(n, c) for n, s, c in SAMPLES if s in COMPRESSED])
def test_stored_frames_are_the_encapsulated_fragments(name, count):
    image = image_of(name)
    for number in range(1, count + 1):
        assert frames.frame(image, number, False) == expected_stored(path_of(name), number)


def test_native_frames_are_the_same_with_or_without_decode():
    image = image_of("rtdose.dcm")
    assert frames.frame(image, 7, False) == frames.frame(image, 7, True)
    assert len(frames.frame(image, 7, False)) == 10 * 10 * 4  # Rows x Columns x 32 bits


def test_frames_come_in_request_order_with_repeats():
    image = image_of("emri_small.dcm")
    got = list(frames.frames(image, (3, 1, 10, 3), True))
    assert got == [expected_pixels(path_of("emri_small.dcm"), n) for n in (3, 1, 10, 3)]


def test_the_liver_segmentation_frames_are_packed_bits():
    image = image_of("liver.dcm")
    ds = pydicom.dcmread(path_of("liver.dcm"))
    for number in (1, 2, 3):
        got = frames.frame(image, number, False)
        assert len(got) == 512 * 512 // 8
        assert got == pack_bits(ds.pixel_array[number - 1])
        assert got == ds.PixelData[(number - 1) * 32768 : number * 32768]  # byte-aligned here


def one_bit_object(array):
    """A 1-bit multi-frame object whose frames do not start on byte boundaries (3 x 5 bits)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = EVRLE
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.66.4"
    ds.SOPInstanceUID = "1.2.3.4.5"
    ds.Rows, ds.Columns, ds.NumberOfFrames = array.shape[1], array.shape[2], array.shape[0]
    ds.BitsAllocated = ds.BitsStored = 1
    ds.HighBit = ds.PixelRepresentation = 0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = pack_bits(array)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def test_one_bit_frames_packed_across_bytes_are_repacked_per_frame():
    array = np.random.default_rng(7).integers(0, 2, size=(3, 3, 5), dtype=np.uint8)
    data = one_bit_object(array)
    decoded = pydicom.dcmread(io.BytesIO(data)).pixel_array
    assert np.array_equal(decoded, array)  # pydicom reads the object as built
    image = frames.open_image(data)
    for number in (1, 2, 3):
        assert frames.frame(image, number, False) == pack_bits(decoded[number - 1])
        assert len(frames.frame(image, number, False)) == 2  # 15 bits -> 2 bytes


@pytest.mark.parametrize(
    ("text", "numbers"),
    [("1", (1,)), ("3,1,3", (3, 1, 3)), (" 2 , 4", (2, 4)), ("120", (120,))],
)
def test_frame_list(text, numbers):
    assert frames.parse_frame_list(text) == numbers


@pytest.mark.parametrize(
    "text", ["0", "", "1,,2", "a", "-1", "1.5", "1;2", "\u0661", "9" * 10, ",".join(["1"] * 10001)]
)
def test_bad_frame_list_is_400_naming_frames(text):
    with pytest.raises(BadRequest) as err:
        frames.parse_frame_list(text)
    assert (err.value.status, err.value.parameter) == (400, "frames")


@pytest.mark.parametrize(("name", "number"), [("CT_small.dcm", 2), ("rtdose.dcm", 16),
                                              ("examples_ybr_color.dcm", 31)])
def test_frame_past_number_of_frames_is_400(name, number):
    with pytest.raises(BadRequest) as err:
        frames.frames(image_of(name), (1, number), True)
    assert (err.value.status, err.value.parameter) == (400, "frames")
    assert str(number) in err.value.message


def test_last_frame_is_served():
    assert frames.frame(image_of("rtdose.dcm"), 15, True) == expected_pixels(path_of("rtdose.dcm"), 15)


@pytest.mark.parametrize("name", ["rtplan.dcm", "rtstruct.dcm"])
def test_object_without_pixel_data_is_400(name):
    with pytest.raises(BadRequest) as err:
        frames.open_image(open(path_of(name), "rb").read())
    assert (err.value.status, err.value.parameter) == (400, "frames")


def test_video_frames_are_400():
    ds = pydicom.dcmread(path_of("SC_rgb_jpeg_dcmtk.dcm"))
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.102"  # MPEG-4 AVC/H.264 High Profile
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    with pytest.raises(BadRequest) as err:
        frames.open_image(out.getvalue())
    assert err.value.parameter == "frames"


@pytest.mark.parametrize("data", [b"not dicom at all", b"\x00" * 200])
def test_bytes_that_are_not_dicom_are_a_damaged_object(data):
    with pytest.raises(DamagedObject) as err:
        frames.open_image(data)
    assert err.value.status == 502


def test_truncated_native_pixel_data_is_a_damaged_object():
    # pydicom's MR_truncated.dcm: Pixel Data declares 8192 bytes and holds fewer
    with pytest.raises(DamagedObject, match="truncated"):
        image_of("MR_truncated.dcm")


def test_broken_compressed_frame_is_a_damaged_object():
    ds = pydicom.dcmread(path_of("693_J2KI.dcm"))
    codestream = next(generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = encapsulate([codestream[:200]])
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    with pytest.raises(DamagedObject):
        frames.frame(frames.open_image(out.getvalue()), 1, True)
    assert frames.frame(frames.open_image(out.getvalue()), 1, False) == codestream[:200]


def test_twelve_bit_jpeg_extended_has_no_decoder_here():
    image = image_of("JPEG-lossy.dcm")  # 12-bit: only GPL libjpeg decodes it
    assert image.transfer_syntax == JPEG_EXTENDED and not image.can_decode
    with pytest.raises(NotAcceptable):
        frames.frame(image, 1, True)


# -- negotiation ------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("syntax", "media_type"),
    [  # PS3.18 Table 8.7.3-5
        (JPEG_LOSSLESS_SV1, "image/jpeg"), (JPEG_BASELINE, "image/jpeg"),
        (JPEG_EXTENDED, "image/jpeg"), ("1.2.840.10008.1.2.4.57", "image/jpeg"),
        (RLE, "image/dicom-rle"), (JLS, "image/jls"), ("1.2.840.10008.1.2.4.81", "image/jls"),
        (J2K_LOSSLESS, "image/jp2"), (J2K, "image/jp2"), ("1.2.840.10008.1.2.4.92", "image/jpx"),
        ("1.2.840.10008.1.2.4.93", "image/jpx"), ("1.2.840.10008.1.2.4.201", "image/jphc"),
        (EVRLE, None), ("1.2.840.10008.1.2.4.102", None),
    ],
)
def test_frame_media_type(syntax, media_type):
    assert frame_media_type(syntax) == media_type


MR = "multipart/related"


@pytest.mark.parametrize(
    ("accept", "count", "stored", "can_decode", "choice"),
    [
        (None, 1, JPEG_BASELINE, True, (OCTET, EVRLE, True, True)),
        (None, 1, JPEG_BASELINE, False, ("image/jpeg", JPEG_BASELINE, False, True)),
        ("*/*", 2, EVRLE, True, (OCTET, EVRLE, False, True)),
        ("text/html,application/xhtml+xml,*/*;q=0.8", 1, RLE, True, (OCTET, EVRLE, True, True)),
        (f'{MR}; type="application/octet-stream"', 1, RLE, True, (OCTET, EVRLE, True, True)),
        (f"{MR}; type=application/octet-stream; transfer-syntax=*", 1, RLE, True,
         (OCTET, RLE, False, True)),
        (f'{MR}; transfer-syntax=*; type="application/octet-stream"', 1, J2K, True,
         (OCTET, J2K, False, True)),
        (f"{MR}; type=application/octet-stream; transfer-syntax=*", 1, EVRLE, True,
         (OCTET, EVRLE, False, True)),
        (f"{MR}; type=application/octet-stream; transfer-syntax={JPEG_BASELINE}", 1,
         JPEG_BASELINE, True, (OCTET, JPEG_BASELINE, False, True)),
        (f"{MR}; type=application/octet-stream; transfer-syntax=1.2.840.10008.1.2", 1,
         JPEG_BASELINE, True, (OCTET, EVRLE, True, True)),
        (f'{MR}; type="application/octet-stream"', 3, BIG_ENDIAN, False, (OCTET, EVRLE, False, True)),
        (f'{MR}; type="image/jpeg"', 3, JPEG_LOSSLESS_SV1, True,
         ("image/jpeg", JPEG_LOSSLESS_SV1, False, True)),
        (f'{MR}; type="image/jpeg"; transfer-syntax={JPEG_BASELINE}', 1, JPEG_BASELINE, True,
         ("image/jpeg", JPEG_BASELINE, False, True)),
        (f'{MR}; type="image/x-dicom-rle"', 1, RLE, True, ("image/x-dicom-rle", RLE, False, True)),
        (f'{MR}; type="image/dicom-rle"', 1, RLE, True, ("image/dicom-rle", RLE, False, True)),
        (f'{MR}; type="image/x-jls"', 1, JLS, True, ("image/x-jls", JLS, False, True)),
        (f'{MR}; type="image/*"', 1, J2K_LOSSLESS, True, ("image/jp2", J2K_LOSSLESS, False, True)),
        ("image/jp2", 1, J2K, True, ("image/jp2", J2K, False, False)),
        ("application/octet-stream", 1, EVRLE, True, (OCTET, EVRLE, False, False)),
        (f'{MR}; type="image/jpeg"; q=0.5, {MR}; type="application/octet-stream"', 1,
         JPEG_BASELINE, True, (OCTET, EVRLE, True, True)),
        (f'{MR}; type="image/jpeg", {MR}; type="application/octet-stream"; q=0.9', 1,
         JPEG_BASELINE, True, ("image/jpeg", JPEG_BASELINE, False, True)),
        (f'{MR}; type="image/jpeg", {MR}; type="application/octet-stream"; q=0.9', 1, EVRLE,
         True, (OCTET, EVRLE, False, True)),
        (f'{MR}; type="application/octet-stream", {MR}; type=image/jpeg', 1, JPEG_EXTENDED,
         False, ("image/jpeg", JPEG_EXTENDED, False, True)),
        ("image/jpeg, */*;q=0.1", 2, EVRLE, True, (OCTET, EVRLE, False, True)),
    ],
)
def test_choose_frames(accept, count, stored, can_decode, choice):
    assert choose_frames(frame_ranges(accept, count), stored, can_decode) == FrameChoice(*choice)


@pytest.mark.parametrize(
    ("accept", "stored", "can_decode"),
    [
        (f'{MR}; type="image/jpeg"', EVRLE, True),  # no encoder: only the stored syntax
        (f'{MR}; type="image/jpeg"; transfer-syntax={JPEG_LOSSLESS_SV1}', JPEG_BASELINE, True),
        (f'{MR}; type="image/jls"', JPEG_BASELINE, True),
        (f'{MR}; type="image/*"', EVRLE, True),
        (f'{MR}; type="application/octet-stream"', JPEG_EXTENDED, False),
        (f'{MR}; type="application/octet-stream"; transfer-syntax={BIG_ENDIAN}', EVRLE, True),
    ],
)
def test_choose_frames_not_acceptable(accept, stored, can_decode):
    with pytest.raises(NotAcceptable) as err:
        choose_frames(frame_ranges(accept, 1), stored, can_decode)
    assert err.value.status == 406


@pytest.mark.parametrize(
    ("accept", "count"),
    [
        ("application/dicom+json", 1),
        (f'{MR}; type="application/dicom"', 1),
        ("image/jpeg", 2),  # a single-part type holds one frame only
        ("application/octet-stream", 3),
        (f'{MR}; type="image/jpeg"; q=0', 1),
        (f'{MR}; type="application/octet-stream"; transfer-syntax=bogus', 1),
    ],
)
def test_frame_ranges_not_acceptable_before_any_fetch(accept, count):
    with pytest.raises(NotAcceptable):
        frame_ranges(accept, count)


@pytest.mark.parametrize("name", ["CT_small.dcm", "rtdose.dcm", "MR_small.dcm"])
@pytest.mark.parametrize("short", [1, 2, 499])
def test_an_object_cut_short_inside_its_last_value_is_damaged(name: str, short: int) -> None:
    """PS3.5 7.1.1: a defined Value Length is the exact length of the value, so an object
    whose stream ends `short` bytes early holds less than its Pixel Data declares."""
    data = Path(get_testdata_file(name)).read_bytes()
    assert part10.read(data).SOPClassUID  # whole, it reads
    with pytest.raises(part10.DamagedObject, match="truncated"):
        part10.read(data[:-short])
