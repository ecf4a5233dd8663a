"""gateway.wado_uri: the WADO-URI query parameters of PS3.18 chapter 9 (9.1.2, 9.4.1.2,
9.5.1.2) and the choice of representation, table-driven. Objects are the sample files or
small datasets built here with pydicom; expected pixels come from pydicom, never from the code
under test."""

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from gateway import wado_uri
from gateway.connectors.base import Part10
from gateway.errors import BadRequest, NotAcceptable
from gateway.rendering import MAX_VIEWPORT, Viewport, Window
from gateway.wado_uri import ImageInfo, Region, WadoRequest
from tests.harness import samples

STUDY, SERIES, SOP = "1.2.3", "1.2.3.4", "1.2.3.4.5"
BASE = [("requestType", "WADO"), ("studyUID", STUDY), ("seriesUID", SERIES), ("objectUID", SOP)]
EVRLE = "1.2.840.10008.1.2.1"
INDEX = samples.sample_index()


def parse(*extra, base=BASE):
    return wado_uri.parse([*base, *extra])


# -- parsing: what a valid request becomes --------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ((), WadoRequest(SOP, STUDY, SERIES)),
        ((("contentType", "application/dicom"),),
         WadoRequest(SOP, STUDY, SERIES, (wado_uri.DICOM,))),
        # Weasis: contentType=application%2Fdicom, then the series' syntax
        ((("contentType", "application/dicom"), ("transferSyntax", EVRLE)),
         WadoRequest(SOP, STUDY, SERIES, ("application/dicom",), transfer_syntax=EVRLE)),
        ((("contentType", "application/dicom"), ("transferSyntax", "*")),
         WadoRequest(SOP, STUDY, SERIES, ("application/dicom",), transfer_syntax="*")),
        # the manifest's additional parameters repeat transferSyntax=*: the UID wins, either order
        ((("contentType", "application/dicom"), ("transferSyntax", EVRLE), ("transferSyntax", "*")),
         WadoRequest(SOP, STUDY, SERIES, ("application/dicom",), transfer_syntax=EVRLE)),
        ((("contentType", "application/dicom"), ("transferSyntax", "*"), ("transferSyntax", EVRLE)),
         WadoRequest(SOP, STUDY, SERIES, ("application/dicom",), transfer_syntax=EVRLE)),
        # Weasis thumbnails
        ((("contentType", "image/jpeg"), ("imageQuality", "75"), ("rows", "64"), ("columns", "64")),
         WadoRequest(SOP, STUDY, SERIES, ("image/jpeg",), rows=64, columns=64, quality=75)),
        # a list in preference order, with q-values (RFC 9110 12.5.1)
        ((("contentType", "image/png,application/dicom"),),
         WadoRequest(SOP, STUDY, SERIES, ("image/png", "application/dicom"))),
        ((("contentType", "image/gif;q=0.5, image/png"),),
         WadoRequest(SOP, STUDY, SERIES, ("image/png", "image/gif"))),
        ((("contentType", "text/html, image/*"),),
         WadoRequest(SOP, STUDY, SERIES, ("image/jpeg",))),
        ((("contentType", "application/*"),),
         WadoRequest(SOP, STUDY, SERIES, ("application/dicom",))),
        ((("frameNumber", "3"), ("windowCenter", "40"), ("windowWidth", "400.5")),
         WadoRequest(SOP, STUDY, SERIES, frame=3, window=Window(40.0, 400.5, "linear"))),
        ((("windowCenter", "-1E2"), ("windowWidth", "1")),
         WadoRequest(SOP, STUDY, SERIES, window=Window(-100.0, 1.0, "linear"))),
        ((("region", "0,0.25,0.5,1.0"),),
         WadoRequest(SOP, STUDY, SERIES, region=Region(0.0, 0.25, 0.5, 1.0))),
        ((("charset", "UTF-8,ISO-8859-1;q=0.5"),),
         WadoRequest(SOP, STUDY, SERIES, charset="UTF-8,ISO-8859-1;q=0.5")),
        ((("annotation", "patient"), ("presentationUID", "1.2")),
         WadoRequest(SOP, STUDY, SERIES, ignored=("annotation", "presentationUID"))),
        # unknown parameters (Weasis appends its own) are ignored; a repeat of one value is one
        ((("weasisParam", "x"), ("objectUID", SOP), ("rows", "2"), ("rows", "2")),
         WadoRequest(SOP, STUDY, SERIES, rows=2)),
        # imageQuality is accepted with application/dicom (ignored later, with a Warning)
        ((("contentType", "application/dicom"), ("imageQuality", "80")),
         WadoRequest(SOP, STUDY, SERIES, ("application/dicom",), quality=80)),
    ],
)
def test_valid_requests(extra, expected):
    assert parse(*extra) == expected


def test_object_uid_alone_is_accepted():
    """Weasis' requireOnlySOPInstanceUID: requestType and objectUID only."""
    assert parse(base=[("requestType", "WADO"), ("objectUID", SOP)]) == WadoRequest(SOP)


# -- parsing: every error names its parameter -----------------------------------------------


@pytest.mark.parametrize(
    ("pairs", "parameter"),
    [
        ([("studyUID", STUDY), ("seriesUID", SERIES), ("objectUID", SOP)], "requestType"),
        ([("requestType", "wado"), ("objectUID", SOP)], "requestType"),  # the value is "WADO"
        ([("requestType", "WADO")], "objectUID"),
        ([("requestType", "WADO"), ("objectUID", "1.2.abc")], "objectUID"),
        ([("requestType", "WADO"), ("objectUID", "1." + "2" * 70)], "objectUID"),  # > 64 chars
        ([("requestType", "WADO"), ("objectUID", "")], "objectUID"),
        ([("requestType", "WADO"), ("studyUID", STUDY), ("objectUID", SOP)], "seriesUID"),
        ([("requestType", "WADO"), ("seriesUID", SERIES), ("objectUID", SOP)], "studyUID"),
        ([*BASE[:1], ("studyUID", "x"), *BASE[2:]], "studyUID"),
        ([*BASE[:2], ("seriesUID", "1..2"), *BASE[3:]], "seriesUID"),
        ([*BASE, ("objectUID", "1.2.3.4.6")], "objectUID"),  # twice, two values
        ([*BASE, ("contentType", "application/dicom"), ("transferSyntax", "JPEG")],
         "transferSyntax"),
        ([*BASE, ("transferSyntax", EVRLE)], "transferSyntax"),  # default type is image/jpeg
        ([*BASE, ("contentType", "image/png"), ("transferSyntax", EVRLE)], "transferSyntax"),
        ([*BASE, ("contentType", "application/dicom"), ("transferSyntax", EVRLE),
          ("transferSyntax", "1.2.840.10008.1.2")], "transferSyntax"),
        ([*BASE, ("anonymize", "yes")], "anonymize"),
        ([*BASE, ("contentType", "application/dicom"), ("frameNumber", "1")], "frameNumber"),
        ([*BASE, ("contentType", "application/dicom"), ("rows", "64")], "rows"),
        ([*BASE, ("contentType", "application/dicom"), ("columns", "64")], "columns"),
        ([*BASE, ("contentType", "application/dicom"), ("region", "0,0,1,1")], "region"),
        ([*BASE, ("contentType", "application/dicom"), ("windowCenter", "1"),
          ("windowWidth", "2")], "windowCenter"),
        ([*BASE, ("frameNumber", "0")], "frameNumber"),  # 1-based
        ([*BASE, ("frameNumber", "-1")], "frameNumber"),
        ([*BASE, ("frameNumber", "1.5")], "frameNumber"),
        ([*BASE, ("frameNumber", "")], "frameNumber"),
        ([*BASE, ("rows", "0")], "rows"),
        ([*BASE, ("rows", "ten")], "rows"),
        ([*BASE, ("rows", str(MAX_VIEWPORT + 1))], "rows"),
        ([*BASE, ("columns", "-5")], "columns"),
        ([*BASE, ("imageQuality", "0")], "imageQuality"),
        ([*BASE, ("imageQuality", "101")], "imageQuality"),
        ([*BASE, ("windowCenter", "40")], "windowWidth"),  # both or neither
        ([*BASE, ("windowWidth", "400")], "windowCenter"),
        ([*BASE, ("windowCenter", "forty"), ("windowWidth", "400")], "windowCenter"),
        ([*BASE, ("windowCenter", "40"), ("windowWidth", "nan")], "windowWidth"),
        ([*BASE, ("windowCenter", "40"), ("windowWidth", "0.5")], "windowWidth"),  # C.11.2.1.2.1
        ([*BASE, ("region", "0,0,1")], "region"),
        ([*BASE, ("region", "0.5,0,0.5,1")], "region"),  # x2 > x1
        ([*BASE, ("region", "0,0,1,1.5")], "region"),  # at most 1.0
        ([*BASE, ("region", "a,b,c,d")], "region"),
        ([*BASE, ("charset", "utf 8")], "charset"),
    ],
)
def test_errors_name_their_parameter(pairs, parameter):
    with pytest.raises(BadRequest) as caught:
        wado_uri.parse(pairs)
    assert caught.value.parameter == parameter
    assert parameter in caught.value.message
    assert caught.value.status == 400


@pytest.mark.parametrize("value", ["text/html", "application/pdf", "image/jp2", "video/mpeg"])
def test_a_content_type_the_gateway_does_not_make_is_406(value):
    with pytest.raises(NotAcceptable) as caught:
        parse(("contentType", value))
    assert caught.value.status == 406 and "contentType" in caught.value.message


# -- choice of representation ----------------------------------------------------------------

IMAGE = ImageInfo(rows=10, columns=20, frames=1)


@pytest.mark.parametrize(
    ("types", "info", "expected"),
    [
        ((), IMAGE, "image/jpeg"),  # PS3.18 9.5: image/jpeg is the default for images
        ((), None, "application/dicom"),  # no pixel data: the object itself
        (("image/png", "application/dicom"), IMAGE, "image/png"),
        (("image/png", "application/dicom"), None, "application/dicom"),
        (("application/dicom", "image/png"), IMAGE, "application/dicom"),
        (("image/gif",), IMAGE, "image/gif"),
    ],
)
def test_choose(types, info, expected):
    assert wado_uri.choose(WadoRequest(SOP, content_types=types), info) == expected


def test_a_rendered_type_alone_for_an_object_without_pixels_is_406():
    with pytest.raises(NotAcceptable):
        wado_uri.choose(WadoRequest(SOP, content_types=("image/png",)), None)


@pytest.mark.parametrize(
    ("request_", "expected"),
    [
        (WadoRequest(SOP), None),
        (WadoRequest(SOP, rows=64, columns=32), Viewport(32, 64)),
        (WadoRequest(SOP, rows=64), Viewport(MAX_VIEWPORT, 64)),
        (WadoRequest(SOP, columns=32), Viewport(32, MAX_VIEWPORT)),
        # PS3.18 9.5.1.2.5 on a 20 x 10 image: the left half, rows 2.5 to 10 (touched: 2..9)
        (WadoRequest(SOP, region=Region(0, 0.25, 0.5, 1)), Viewport(10, 8, 0, 2, 10, 8)),
        (WadoRequest(SOP, region=Region(0.5, 0, 1, 0.5), rows=100),
         Viewport(MAX_VIEWPORT, 100, 10, 0, 10, 5)),
    ],
)
def test_viewport(request_, expected):
    assert wado_uri.viewport(request_, IMAGE) == expected


# -- representations of real objects -----------------------------------------------------------


def part_of(name):
    info = INDEX[name]
    data = Path(info["path"]).read_bytes()
    return Part10(data, info["TransferSyntaxUID"], info["SOPInstanceUID"])


def test_dicom_as_stored_is_the_file():
    part = part_of("CT_small.dcm")
    out = wado_uri.represent(part, parse(("contentType", "application/dicom")))
    assert (out.media_type, out.body, out.warnings) == ("application/dicom", part.data, ())


def test_image_quality_with_dicom_is_ignored_with_a_warning():
    part = part_of("CT_small.dcm")
    request = parse(("contentType", "application/dicom"), ("imageQuality", "50"))
    out = wado_uri.represent(part, request)
    assert out.body == part.data
    assert out.warnings == ("parameter imageQuality is not supported and was ignored",)


def test_transfer_syntax_decodes_a_jpeg_sample_to_pydicoms_pixels():
    part = part_of("SC_rgb_jpeg_dcmtk.dcm")
    out = wado_uri.represent(part, parse(("contentType", "application/dicom"),
                                         ("transferSyntax", EVRLE)))
    got = pydicom.dcmread(io.BytesIO(out.body))
    assert got.file_meta.TransferSyntaxUID == EVRLE
    source = pydicom.dcmread(INDEX["SC_rgb_jpeg_dcmtk.dcm"]["path"])
    assert np.array_equal(got.pixel_array, source.pixel_array)


def test_a_syntax_that_cannot_be_produced_is_406():
    """The gateway adds no loss: uncompressed CT to JPEG baseline is refused (PS3.18 8.7.3.5)."""
    with pytest.raises(NotAcceptable):
        wado_uri.represent(part_of("CT_small.dcm"), parse(
            ("contentType", "application/dicom"), ("transferSyntax", "1.2.840.10008.1.2.4.50")))


def test_frame_number_past_the_frames_names_frame_number():
    assert INDEX["rtdose.dcm"]["NumberOfFrames"] == 15
    with pytest.raises(BadRequest) as caught:
        wado_uri.represent(part_of("rtdose.dcm"), parse(("frameNumber", "16")))
    assert caught.value.parameter == "frameNumber"


def test_inspect_reads_the_image_geometry():
    info = INDEX["rtdose.dcm"]
    ds = pydicom.dcmread(info["path"], stop_before_pixels=True)
    assert wado_uri.inspect(part_of("rtdose.dcm").data) == ImageInfo(ds.Rows, ds.Columns, 15)


def structured_report():
    """A small Basic Text SR: no pixel data."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = generate_uid(), generate_uid(), "SR"
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return Part10(out.getvalue(), ExplicitVRLittleEndian, ds.SOPInstanceUID)


def test_an_object_without_pixels_is_sent_as_dicom_by_default():
    part = structured_report()
    assert wado_uri.inspect(part.data) is None
    out = wado_uri.represent(part, parse())
    assert (out.media_type, out.body) == ("application/dicom", part.data)


def test_rendered_png_sizes_from_rows_and_columns():
    out = wado_uri.represent(part_of("MR_small.dcm"), parse(("contentType", "image/png"),
                                                            ("rows", "32"), ("columns", "16")))
    image = Image.open(io.BytesIO(out.body))
    assert (out.media_type, image.format, image.size) == ("image/png", "PNG", (16, 16))
