"""Accept negotiation (PS3.18 8.7)."""

import pytest

from gateway.errors import NotAcceptable
from gateway.negotiation import BulkAsk, frame_ranges, negotiate_bulk, negotiate_instances, negotiate_json

EVRLE = "1.2.840.10008.1.2.1"


@pytest.mark.parametrize(
    ("accept", "syntax"),
    [
        (None, EVRLE),
        ("*/*", EVRLE),
        ('multipart/related; type="application/dicom"', EVRLE),
        ('multipart/related; type="application/dicom"; transfer-syntax=*', "*"),
        ("multipart/related; type=application/dicom; transfer-syntax=*", "*"),  # OHIF unquoted
        ('multipart/related; transfer-syntax=1.2.840.10008.1.2.4.50; type="application/dicom"',
         "1.2.840.10008.1.2.4.50"),
        (
            (
                'application/dicom+json, multipart/related; type="application/dicom";'
                ' transfer-syntax="1.2.840.10008.1.2"'
            ),
            "1.2.840.10008.1.2",
        ),
        (
            (
                'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2;'
                'q=0.5, multipart/related; type="application/dicom"; transfer-syntax=*'
            ),
            "*",
        ),
        ("text/html,application/xhtml+xml,*/*;q=0.8", EVRLE),
    ],
)
def test_instances(accept, syntax):
    assert negotiate_instances(accept)[0] == syntax  # the most preferred first


@pytest.mark.parametrize(
    ("accept", "syntaxes"),
    [
        (
            ('multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.50,'
            ' multipart/related; type="application/dicom"; transfer-syntax=*;q=0.5'),
            ("1.2.840.10008.1.2.4.50", "*"),
        ),
        (
            ('multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.2,'
            " */*;q=0.1"),
            ("1.2.840.10008.1.2.2", EVRLE),
        ),
        (  # an invalid q (NaN, out of 0..1) counts as 1: it does not upset the order of others
            ('multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.1;'
            'q=0.1, multipart/related; type="application/dicom"; transfer-syntax=*;q=nan,'
            ' multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2;'
            "q=0.9"),
            ("*", "1.2.840.10008.1.2", "1.2.840.10008.1.2.1"),
        ),
    ],
)
def test_every_acceptable_syntax_in_order_of_preference(accept, syntaxes):
    assert negotiate_instances(accept) == syntaxes


@pytest.mark.parametrize(
    "accept",
    [
        "application/dicom+json",
        'multipart/related; type="application/octet-stream"',
        'multipart/related; type="application/dicom"; q=0',
    ],
)
def test_instances_not_acceptable(accept):
    with pytest.raises(NotAcceptable) as err:
        negotiate_instances(accept)
    assert err.value.status == 406
    assert err.value.message == 'instances are served as multipart/related; type="application/dicom"'


@pytest.mark.parametrize("syntax", ["notauid", "1.2..3", "foo"])
def test_a_transfer_syntax_that_is_not_a_uid_is_named_in_the_406(syntax):
    with pytest.raises(NotAcceptable) as err:
        negotiate_instances(f'multipart/related; type="application/dicom"; transfer-syntax={syntax}')
    assert err.value.status == 406
    assert "transfer-syntax is neither a UID" in err.value.message
    with pytest.raises(NotAcceptable) as err:  # frames too
        frame_ranges(f'multipart/related; type="application/octet-stream"; transfer-syntax={syntax}', 1)
    assert err.value.status == 406
    assert "transfer-syntax is neither a UID" in err.value.message


@pytest.mark.parametrize(
    ("accept", "mimetype"),
    [
        (None, "application/dicom+json"),
        ("application/dicom+json", "application/dicom+json"),
        ("application/json", "application/json"),
        ("text/html, */*;q=0.1", "application/dicom+json"),
        ("application/*", "application/dicom+json"),
    ],
)
def test_json(accept, mimetype):
    assert negotiate_json(accept) == mimetype


@pytest.mark.parametrize("accept", ["application/dicom+xml", 'multipart/related; type="application/dicom+xml"', "text/html"])
def test_json_not_acceptable(accept):
    with pytest.raises(NotAcceptable):
        negotiate_json(accept)


@pytest.mark.parametrize(
    ("accept", "asked"),
    [
        (None, BulkAsk(False, EVRLE)),
        ("*/*", BulkAsk(False, EVRLE)),
        ("application/octet-stream; transfer-syntax=*", BulkAsk(False, "*")),
        ('multipart/related; type="application/octet-stream"', BulkAsk(True, EVRLE)),
        ('multipart/related; type="Application/Octet-Stream"', BulkAsk(True, EVRLE)),  # RFC 2045
        ("multipart/related; type=application/*", BulkAsk(True, EVRLE)),
        ("multipart/*", BulkAsk(True, EVRLE)),
        ('multipart/related; type="application/octet-stream"; transfer-syntax=1.2.840.10008.1.2',
         BulkAsk(True, "1.2.840.10008.1.2")),
        # a syntax bulk data does not come in is skipped for the next range
        ("application/octet-stream; transfer-syntax=1.2.840.10008.1.2.4.50, */*;q=0.1",
         BulkAsk(False, EVRLE)),
    ],
)
def test_bulk_negotiation(accept, asked):
    assert negotiate_bulk(accept) == asked


@pytest.mark.parametrize(
    "accept",
    ["image/jpeg", 'multipart/related; type="image/jpeg"',
     "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.4.50"],
)
def test_bulk_negotiation_refuses(accept):
    with pytest.raises(NotAcceptable):
        negotiate_bulk(accept)
