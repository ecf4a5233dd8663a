"""gateway.jsoncodec: the JSON of the hot paths, and the garbage collector paused while a large
document is decoded (and only then)."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator

import pytest

from gateway import jsoncodec


@pytest.fixture(autouse=True)
def gc_restored() -> Iterator[None]:
    was = gc.isenabled()
    yield
    if was:
        gc.enable()
    else:
        gc.disable()


def big_document() -> bytes:
    # 4,000 small DICOM JSON datasets: past GC_PAUSE_BYTES
    one = '{"00080018":{"vr":"UI","Value":["1.2.3.%d"]},"00280010":{"vr":"US","Value":[512]}}'
    return ("[" + ",".join(one % i for i in range(4000)) + "]").encode()


def test_round_trip_keeps_non_ascii_and_huge_integers() -> None:
    value = {"00100010": {"vr": "PN", "Value": [{"Alphabetic": "Müller^Jörg"}]}, "n": 2**70}
    data = jsoncodec.dumps(value)
    assert "Müller^Jörg".encode() in data  # UTF-8 as itself, not \\u escapes
    assert jsoncodec.loads(data) == value


def test_invalid_json_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        jsoncodec.loads(b'{"00080018": ')


def test_the_collector_is_off_during_a_large_decode_and_back_on_after(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[bool] = []
    real = jsoncodec.orjson.loads
    monkeypatch.setattr(jsoncodec.orjson, "loads", lambda d: seen.append(gc.isenabled()) or real(d))
    gc.enable()
    data = big_document()
    assert len(data) >= jsoncodec.GC_PAUSE_BYTES
    assert len(jsoncodec.loads(data)) == 4000
    assert jsoncodec.loads(b'{"a": 1}') == {"a": 1}
    assert seen == [False, True]  # paused for the large one only
    assert gc.isenabled()


def test_a_collector_turned_off_elsewhere_stays_off() -> None:
    gc.disable()
    jsoncodec.loads(big_document())
    assert not gc.isenabled()


def test_the_collector_stays_off_until_the_last_of_overlapping_pauses_ends() -> None:
    gc.enable()
    inside, release = threading.Event(), threading.Event()

    def hold() -> None:
        with jsoncodec.paused_gc():
            inside.set()
            release.wait(10)

    other = threading.Thread(target=hold)
    other.start()
    assert inside.wait(10)
    with jsoncodec.paused_gc():
        assert not gc.isenabled()
    assert not gc.isenabled()  # the other thread is still decoding
    release.set()
    other.join(10)
    assert gc.isenabled()


def test_a_failed_decode_turns_the_collector_back_on() -> None:
    gc.enable()
    with pytest.raises(ValueError):
        jsoncodec.loads(big_document()[:-1])
    assert gc.isenabled()


def test_an_encoded_array_is_not_encoded_again() -> None:
    items = [{"00080018": {"vr": "UI", "Value": ["1.2.3"]}}]
    encoded = jsoncodec.dumps(items)
    carried = jsoncodec.Encoded(items, encoded)
    assert carried == items and jsoncodec.dumps(carried) is encoded
    assert jsoncodec.dumps(list(carried)) == encoded  # a plain copy is encoded as usual
