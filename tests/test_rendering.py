"""gateway.rendering against ground truth: each expected image is computed here, from pydicom's
pixel_array of the sample, with a small independent numpy implementation of the PS3.3
C.11.2.1.2 window functions (piecewise, as the standard writes them) and of the colour rules.

PNG is lossless, so a PNG must equal the expectation exactly. JPEG at quality 95 must be within
a mean absolute difference of 2 and a maximum of 40 grey levels. Output values are rounded to
the nearest integer (the standard's formulas give real numbers)."""

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence

from gateway import rendering
from gateway.errors import BadRequest, NotAcceptable
from gateway.part10 import DamagedObject
from gateway.rendering import RenderParams, Viewport, Window

PNG = RenderParams(media_type="image/png")


def sample(name):
    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"sample {name} is not installed (pip install pydicom-data)")
    return Path(str(path))


def pixels_of(name, decoders=None):
    """pydicom's pixel_array of a sample; a compressed sample that pydicom cannot decode in
    this environment skips, naming the missing decoder."""
    ds = pydicom.dcmread(sample(name))
    try:
        return ds, ds.pixel_array
    except RuntimeError:  # pydicom: "... because all plugins are missing dependencies"
        pytest.skip(f"pydicom cannot decode {ds.file_meta.TransferSyntaxUID.name} here: "
                    f"missing decoder ({decoders})")


def part10(ds):
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def png(data):
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    return np.asarray(image)


# -- ground truth: PS3.3 C.11.2.1.2 / C.11.2.1.3 with ymin 0 and ymax 255 -------------------


def linear(x, c, w):
    """C.11.2.1.2.1: three cases."""
    x = np.asarray(x, dtype=np.float64)
    y = np.empty_like(x)
    low = x <= c - 0.5 - (w - 1) / 2
    high = x > c - 0.5 + (w - 1) / 2
    mid = ~(low | high)
    y[low], y[high] = 0, 255
    y[mid] = ((x[mid] - (c - 0.5)) / (w - 1) + 0.5) * 255
    return np.rint(y).astype(np.uint8)


def linear_exact(x, c, w):
    """C.11.2.1.3.2: three cases."""
    x = np.asarray(x, dtype=np.float64)
    y = np.where(x <= c - w / 2, 0.0, np.where(x > c + w / 2, 255.0, ((x - c) / w + 0.5) * 255))
    return np.rint(y).astype(np.uint8)


def sigmoid(x, c, w):
    """C.11.2.1.3.1."""
    x = np.asarray(x, dtype=np.float64)
    return np.rint(255 / (1 + np.exp(-4 * (x - c) / w))).astype(np.uint8)


def full_range(x):
    """No window anywhere: the frame's minimum is black and its maximum white."""
    x = np.asarray(x, dtype=np.float64)
    return np.rint((x - x.min()) * 255 / (x.max() - x.min())).astype(np.uint8)


def modality(ds, arr):
    """C.11.1.1.2: output units = m * SV + b."""
    return arr.astype(np.float64) * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0))


# -- monochrome --------------------------------------------------------------------------------


def test_own_window_of_mr_small_is_the_linear_function():
    ds, arr = pixels_of("MR_small.dcm")
    assert (float(ds.WindowCenter), float(ds.WindowWidth)) == (600.0, 1600.0)
    got = png(rendering.render(sample("MR_small.dcm").read_bytes(), 1, PNG))
    assert got.dtype == np.uint8 and got.shape == (64, 64)
    assert np.array_equal(got, linear(arr, 600, 1600))


def test_jpeg_is_within_tolerance_at_quality_95():
    _, arr = pixels_of("MR_small.dcm")
    data = rendering.render(sample("MR_small.dcm").read_bytes(), 1, RenderParams(quality=95))
    image = Image.open(io.BytesIO(data))
    assert (image.format, image.mode, image.size) == ("JPEG", "L", (64, 64))
    diff = np.abs(np.asarray(image, dtype=np.int16) - linear(arr, 600, 1600).astype(np.int16))
    assert diff.mean() < 2 and diff.max() < 40
    small = rendering.render(sample("MR_small.dcm").read_bytes(), 1, RenderParams(quality=5))
    assert len(small) < len(data)


def test_ct_small_without_window_uses_rescale_and_the_frame_range():
    ds, arr = pixels_of("CT_small.dcm")
    assert "WindowCenter" not in ds and float(ds.RescaleIntercept) == -1024
    got = png(rendering.render(sample("CT_small.dcm").read_bytes(), 1, PNG))
    assert np.array_equal(got, full_range(modality(ds, arr)))


@pytest.mark.parametrize(
    ("name", "decoders"),
    [
        ("693_J2KI.dcm", "JPEG 2000: pylibjpeg-openjpeg, python-gdcm or Pillow with OpenJPEG"),
        ("MR2_J2KI.dcm", "JPEG 2000: pylibjpeg-openjpeg, python-gdcm or Pillow with OpenJPEG"),
        ("MR_small_jpeg_ls_lossless.dcm", "JPEG-LS: pyjpegls, pylibjpeg-libjpeg or python-gdcm"),
        ("JPGLosslessP14SV1_1s_1f_8b.dcm", "JPEG lossless: pylibjpeg-libjpeg or python-gdcm"),
    ],
)
def test_compressed_monochrome_with_own_window_and_rescale(name, decoders):
    ds, arr = pixels_of(name, decoders)
    c, w = float(ds.WindowCenter), float(ds.WindowWidth)
    got = png(rendering.render(sample(name).read_bytes(), 1, PNG))
    assert np.array_equal(got, linear(modality(ds, arr), c, w))


@pytest.mark.parametrize(
    ("window", "truth"),
    [
        (Window(500, 1000, "linear"), lambda x: linear(x, 500, 1000)),
        (Window(500, 1000, "linear-exact"), lambda x: linear_exact(x, 500, 1000)),
        (Window(1000, 300, "sigmoid"), lambda x: sigmoid(x, 1000, 300)),
        (Window(900, 1, "linear"), lambda x: linear(x, 900, 1)),
        (Window(900, 0.25, "linear-exact"), lambda x: linear_exact(x, 900, 0.25)),
    ],
)
def test_requested_window_replaces_the_objects_own(window, truth):
    _, arr = pixels_of("MR_small.dcm")
    params = RenderParams(media_type="image/png", window=window)
    got = png(rendering.render(sample("MR_small.dcm").read_bytes(), 1, params))
    assert np.array_equal(got, truth(arr))


def test_monochrome1_is_inverted():
    ds, arr = pixels_of("MR_small.dcm")
    ds.PhotometricInterpretation = "MONOCHROME1"
    got = png(rendering.render(part10(ds), 1, PNG))
    assert np.array_equal(got, 255 - linear(arr, 600, 1600))
    assert got[arr == arr.max()].max() == 0  # the highest value is black (PS3.3 C.7.6.3.1.2)


def test_voi_lut_function_of_the_object_is_used():
    ds, arr = pixels_of("MR_small.dcm")
    ds.VOILUTFunction = "SIGMOID"
    assert np.array_equal(png(rendering.render(part10(ds), 1, PNG)), sigmoid(arr, 600, 1600))


def test_enhanced_functional_groups_give_the_frame_window_and_rescale():
    ds, arr = pixels_of("MR_small.dcm")
    del ds.WindowCenter, ds.WindowWidth
    voi, transform, group = Dataset(), Dataset(), Dataset()
    voi.WindowCenter, voi.WindowWidth = 1100, 2000
    transform.RescaleSlope, transform.RescaleIntercept, transform.RescaleType = 2, -10, "US"
    group.FrameVOILUTSequence = Sequence([voi])
    group.PixelValueTransformationSequence = Sequence([transform])
    ds.SharedFunctionalGroupsSequence = Sequence([group])
    got = png(rendering.render(part10(ds), 1, PNG))
    assert np.array_equal(got, linear(arr.astype(np.float64) * 2 - 10, 1100, 2000))


def test_multi_frame_renders_the_asked_frame_and_refuses_others():
    ds, arr = pixels_of("rtdose.dcm")
    assert ds.NumberOfFrames == 15 and "WindowCenter" not in ds
    data = sample("rtdose.dcm").read_bytes()
    assert np.array_equal(png(rendering.render(data, 3, PNG)), full_range(arr[2]))
    assert np.array_equal(png(rendering.render(data, 1, PNG)), full_range(arr[0]))
    for frame in (0, 16):
        with pytest.raises(BadRequest) as err:
            rendering.render(data, frame, PNG)
        assert err.value.parameter == "frames"


# -- colour ------------------------------------------------------------------------------------


def test_rgb_bands_of_sc_rgb_rle():
    _, arr = pixels_of("SC_rgb_rle.dcm")
    got = png(rendering.render(sample("SC_rgb_rle.dcm").read_bytes(), 1, PNG))
    assert got.shape == (100, 100, 3) and np.array_equal(got, arr)
    # the sample's colour bands, ten rows each, as pydicom reads them
    for row, colour in [(0, (255, 0, 0)), (25, (0, 255, 0)), (45, (0, 0, 255)), (65, (0, 0, 0)),
                        (95, (255, 255, 255))]:
        assert tuple(arr[row, 0]) == colour and tuple(got[row, 0]) == colour


@pytest.mark.parametrize(
    ("name", "frame", "index"),
    [("SC_rgb_jpeg_dcmtk.dcm", 1, None), ("examples_ybr_color.dcm", 2, 1),
     ("SC_ybr_full_uncompressed.dcm", 1, None)],
)
def test_ybr_is_shown_as_rgb(name, frame, index):
    ds, arr = pixels_of(name, "JPEG baseline: Pillow or pylibjpeg-libjpeg")
    assert ds.PhotometricInterpretation.startswith("YBR_FULL")
    expected = arr if index is None else arr[index]
    got = png(rendering.render(sample(name).read_bytes(), frame, PNG))
    assert np.array_equal(got, expected)


def test_ybr_full_matches_the_ps33_equations():
    ds = pydicom.dcmread(sample("SC_ybr_full_uncompressed.dcm"))
    raw = np.frombuffer(ds.PixelData, dtype=np.uint8).reshape(ds.Rows, ds.Columns, 3)
    y, cb, cr = (raw[..., i].astype(np.float64) for i in range(3))
    rgb = np.stack([y + 1.402 * (cr - 128), y - 0.344136 * (cb - 128) - 0.714136 * (cr - 128),
                    y + 1.772 * (cb - 128)], axis=-1)  # PS3.3 C.7.6.3.1.2 YBR_FULL
    got = png(rendering.render(sample("SC_ybr_full_uncompressed.dcm").read_bytes(), 1, PNG))
    assert np.abs(got.astype(np.int16) - np.clip(np.rint(rgb), 0, 255)).max() <= 1


def test_palette_colour_goes_through_its_lut():
    ds, arr = pixels_of("OBXXXX1A.dcm")
    assert ds.PhotometricInterpretation == "PALETTE COLOR"
    entries, first, bits = ds.RedPaletteColorLookupTableDescriptor
    assert bits == 16
    channels = []
    for colour in ("Red", "Green", "Blue"):
        lut = np.frombuffer(getattr(ds, f"{colour}PaletteColorLookupTableData"), dtype="<u2")
        index = np.clip(arr.astype(np.int64) - first, 0, entries - 1)
        channels.append(np.rint(lut[index].astype(np.float64) * 255 / 65535))
    got = png(rendering.render(sample("OBXXXX1A.dcm").read_bytes(), 1, PNG))
    assert np.array_equal(got, np.stack(channels, axis=-1).astype(np.uint8))


def test_sixteen_bit_rgb_is_scaled_to_eight():
    _, arr = pixels_of("SC_rgb_16bit.dcm")
    got = png(rendering.render(sample("SC_rgb_16bit.dcm").read_bytes(), 1, PNG))
    assert np.array_equal(got, np.rint(arr.astype(np.float64) * 255 / 65535).astype(np.uint8))


# -- viewport ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "viewport", "size"),
    [
        ("CT_small.dcm", Viewport(64, 32), (32, 32)),  # 128 x 128 into 64 x 32
        ("examples_ybr_color.dcm", Viewport(100, 100), (100, 75)),  # 320 x 240
        ("examples_ybr_color.dcm", Viewport(640, 640), (640, 480)),  # scaled up
        ("examples_ybr_color.dcm", Viewport(50, 50, 10, 20, 40, 20), (50, 25)),  # 40 x 20 region
        # from sx=300 to the edge: a 20 x 240 region, scaled by 500 / 240
        ("examples_ybr_color.dcm", Viewport(500, 500, 300, None, None, None), (42, 500)),
    ],
)
def test_viewport_sizes(name, viewport, size):
    params = RenderParams(media_type="image/png", viewport=viewport)
    image = Image.open(io.BytesIO(rendering.render(sample(name).read_bytes(), 1, params)))
    assert image.size == size


def test_thumbnail_defaults_to_128():
    params = rendering.parse_params({}, "image/jpeg", thumbnail=True)
    assert params.viewport == Viewport(128, 128)
    image = Image.open(io.BytesIO(rendering.render(sample("examples_ybr_color.dcm").read_bytes(), 1, params)))
    assert (image.format, image.size) == ("JPEG", (128, 96))
    assert rendering.parse_params({"viewport": "64,64"}, "image/jpeg", True).viewport == Viewport(64, 64)


@pytest.mark.parametrize(
    ("sw", "sh", "flip"),
    [(40, 20, lambda a: a), (-40, 20, lambda a: a[:, ::-1]), (40, -20, lambda a: a[::-1])],
)
def test_source_region_content_and_flips(sw, sh, flip):
    _, arr = pixels_of("MR_small.dcm")
    params = RenderParams(media_type="image/png", viewport=Viewport(40, 20, 10, 30, sw, sh))
    got = png(rendering.render(sample("MR_small.dcm").read_bytes(), 1, params))
    assert np.array_equal(got, flip(linear(arr, 600, 1600)[30:50, 10:50]))


def test_source_region_outside_the_image_names_viewport():
    params = RenderParams(viewport=Viewport(10, 10, 60, 0, 10, 10))  # MR_small is 64 x 64
    with pytest.raises(BadRequest) as err:
        rendering.render(sample("MR_small.dcm").read_bytes(), 1, params)
    assert err.value.parameter == "viewport"


# -- media types and parameters ---------------------------------------------------------------


def test_gif_holds_the_same_grey_levels():
    _, arr = pixels_of("MR_small.dcm")
    data = rendering.render(sample("MR_small.dcm").read_bytes(), 1, RenderParams(media_type="image/gif"))
    image = Image.open(io.BytesIO(data))
    assert image.format == "GIF"
    assert np.array_equal(np.asarray(image.convert("L")), linear(arr, 600, 1600))


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, "image/jpeg"),
        ("*/*", "image/jpeg"),
        ("image/*", "image/jpeg"),
        ("image/png", "image/png"),
        ("image/gif", "image/gif"),
        ("text/html,image/png;q=0.9,image/jpeg;q=0.5", "image/png"),
        ("image/webp,image/*;q=0.8", "image/jpeg"),
    ],
)
def test_negotiation(header, expected):
    assert rendering.negotiate(header) == expected


@pytest.mark.parametrize("header", ["application/dicom", "image/webp", "image/jpeg;q=0"])
def test_negotiation_refuses_other_types(header):
    with pytest.raises(NotAcceptable):
        rendering.negotiate(header)


def test_parameters_are_parsed():
    params = rendering.parse_params(
        {"quality": "95", "viewport": "256,128,,,-40,", "window": "40.5,400,sigmoid",
         "annotation": "patient"}, "image/png")
    assert params == RenderParams("image/png", 95, Viewport(256, 128, None, None, -40, None),
                                  Window(40.5, 400.0, "sigmoid"), ("annotation",))
    assert rendering.parse_params({"window": "40,400"}, "image/jpeg").window == Window(40, 400, "linear")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("quality", "0"), ("quality", "101"), ("quality", "high"), ("quality", "-5"),
        ("viewport", "0,10"), ("viewport", "10,-5"), ("viewport", "10"), ("viewport", "a,b"),
        ("viewport", "10,10,0,0,0,10"), ("viewport", "10,10,-1,0,5,5"), ("viewport", "10,10,1,1"),
        ("viewport", "99999,10"),
        ("window", "40,0,linear"), ("window", "40,-1,linear-exact"), ("window", "40,100,cubic"),
        ("window", "40"), ("window", "a,b,linear"), ("window", "40,0.5,linear"),
        ("window", "nan,100,linear"), ("window", "40,1e999,sigmoid"),
    ],
)
def test_bad_parameter_is_a_400_naming_it(name, value):
    with pytest.raises(BadRequest) as err:
        rendering.parse_params({name: value}, "image/jpeg")
    assert err.value.parameter == name and err.value.status == 400


@pytest.mark.parametrize("text", ["0", "1,2", "x", "-1", "²"])
def test_frame_number_in_the_path(text):
    with pytest.raises(BadRequest) as err:
        rendering.parse_frame(text)
    assert err.value.parameter == "frames"
    assert rendering.parse_frame("7") == 7 and rendering.parse_frame(None) == 1


# -- objects that cannot be rendered -----------------------------------------------------------


def test_a_structured_report_is_not_an_image():
    with pytest.raises(BadRequest, match="no image"):
        rendering.render(sample("test-SR.dcm").read_bytes(), 1, PNG)


def test_render_first_skips_objects_without_pixels():
    _, arr = pixels_of("MR_small.dcm")
    objects = [sample("test-SR.dcm").read_bytes(), sample("MR_small.dcm").read_bytes()]
    assert np.array_equal(png(rendering.render_first(objects, 1, PNG)), linear(arr, 600, 1600))


def test_a_syntax_without_decoder_is_406():
    ds = pydicom.dcmread(sample("CT_small.dcm"))
    ds.PixelData = encapsulate([ds.PixelData])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.107"  # HEVC: pydicom has no decoder
    with pytest.raises(NotAcceptable, match="HEVC"):
        rendering.render(part10(ds), 1, PNG)


def test_damaged_pixel_data_is_a_502():
    ds = pydicom.dcmread(sample("CT_small.dcm"))
    ds.PixelData = ds.PixelData[:100]
    with pytest.raises(DamagedObject) as err:
        rendering.render(part10(ds), 1, PNG)
    assert err.value.status == 502
