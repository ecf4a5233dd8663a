"""The engine's fan-out, merge, paging and partial-failure rules, over in-process connectors.

These connectors are stand-ins for the merge logic only; every connector type is tested against
its real backend in tests/connectors/ and end to end in tests/test_e2e.py.
"""

import threading

import pytest

from gateway.connectors.base import Capabilities, Part10, ResourceRef, SearchResult
from gateway.engine import Backend, Engine
from gateway.errors import AllConnectorsFailed, ConnectorError, ConnectorTimeout, NotFound
from gateway.query import Level, parse_search
from gateway.settings import ConnectorSettings, Timeouts

BASE = "http://gw/dicomweb"


def study(uid, **attrs):
    data = {"0020000D": {"vr": "UI", "Value": [uid]}}
    for k, v in attrs.items():
        data[k] = v
    return data


class ListConnector:
    capabilities = Capabilities()

    def __init__(self, cid, datasets, fail=None, unmatched=frozenset(), block=None):
        self.id, self.datasets, self.fail, self.unmatched = cid, datasets, fail, unmatched
        self.block = block
        self.queries = []

    def search(self, query):
        self.queries.append(query)
        if self.block is not None:
            self.block.wait(5)
        if self.fail:
            raise self.fail
        uids = query.uids(0x0020000D)
        found = [d for d in self.datasets if not uids or d["0020000D"]["Value"][0] in uids]
        if self.unmatched:
            return SearchResult(found, unmatched=self.unmatched)
        return SearchResult(found[query.offset : query.offset + query.limit])

    def retrieve_instances(self, ref, ts):
        yield Part10(b"x", "1.2.840.10008.1.2.1", "1.2.3.4.5")

    def close(self):
        pass


def engine(*connectors, deactivated=None, request_timeout=60.0):
    backends = [
        Backend(
            c,
            ConnectorSettings(
                id=c.id,
                type="DB",
                deactivated=frozenset((deactivated or {}).get(c.id, ())),
                timeouts=Timeouts(request=request_timeout),
            ),
        )
        for c in connectors
    ]
    return Engine(backends)


def uids(answer):
    return [d["0020000D"]["Value"][0] for d in answer.datasets]


def test_merge_by_uid_first_connector_wins_and_keeps_order():
    a = ListConnector(
        "a", [study("1.1", **{"00081030": {"vr": "LO", "Value": ["from a"]}}), study("1.2")]
    )
    b = ListConnector(
        "b",
        [
            study("1.2", **{"00081030": {"vr": "LO", "Value": ["from b"]}}),
            study("1.1", **{"00081030": {"vr": "LO", "Value": ["from b"]}}),
            study("1.3"),
        ],
    )
    answer = engine(a, b).search(
        parse_search(Level.STUDY, [("includefield", "StudyDescription")]), ["a", "b"], BASE
    )
    assert uids(answer) == ["1.1", "1.2", "1.3"]
    descriptions = [d["00081030"].get("Value") for d in answer.datasets]
    # 1.1: a's value; 1.2: a has none, so b's fills in; 1.3 only in b
    assert descriptions == [["from a"], ["from b"], None]
    assert answer.warnings == []


def test_answers_carry_the_gateway_retrieve_url_and_availability():
    answer = engine(ListConnector("a", [study("1.1")])).search(
        parse_search(Level.STUDY, []), ["a"], BASE
    )
    (data,) = answer.datasets
    assert data["00081190"] == {"vr": "UR", "Value": [f"{BASE}/studies/1.1"]}
    assert data["00080056"] == {"vr": "CS", "Value": ["ONLINE"]}
    assert data["00100010"] == {"vr": "PN"}  # required by PS3.18 Table 10.6.3-3, unknown here


def test_conditional_attributes_are_kept_when_the_backend_knows_them():
    # PS3.18 Tables 10.6.3-3 and -4: TimezoneOffsetFromUTC and RequestAttributesSequence are
    # returned "if known": present when the archive has them, never added empty
    request = {"vr": "SQ", "Value": [{"00401001": {"vr": "SH", "Value": ["RP1"]}}]}
    tz = {"vr": "SH", "Value": ["+0100"]}
    known = study("1.1", **{"00080201": tz})
    (data,) = engine(ListConnector("a", [known])).search(
        parse_search(Level.STUDY, []), ["a"], BASE
    ).datasets
    assert data["00080201"] == tz
    series = study("1.2", **{"0020000E": {"vr": "UI", "Value": ["1.2.1"]}, "00400275": request,
                             "00080201": tz})
    (row,) = engine(ListConnector("a", [series])).search(
        parse_search(Level.SERIES, []), ["a"], BASE
    ).datasets
    assert (row["00400275"], row["00080201"]) == (request, tz)
    (bare,) = engine(ListConnector("a", [study("1.3")])).search(
        parse_search(Level.STUDY, []), ["a"], BASE
    ).datasets
    assert "00080201" not in bare and "00400275" not in bare


def test_limit_offset_and_the_299_warning_when_more_remain():
    a = ListConnector("a", [study(f"1.{i}") for i in range(1, 8)])
    eng = engine(a)
    answer = eng.search(parse_search(Level.STUDY, [("limit", "3"), ("offset", "2")]), ["a"], BASE)
    assert uids(answer) == ["1.3", "1.4", "1.5"]
    assert answer.warnings == ["There are additional results that can be requested"]
    last = eng.search(parse_search(Level.STUDY, [("limit", "3"), ("offset", "4")]), ["a"], BASE)
    assert uids(last) == ["1.5", "1.6", "1.7"]
    assert last.warnings == []


def test_one_failing_connector_gives_a_warning_naming_it():
    a = ListConnector("a", [], fail=ConnectorError("C-FIND failed: 0xC001", "a"))
    b = ListConnector("b", [study("1.2")])
    answer = engine(a, b).search(parse_search(Level.STUDY, []), ["a", "b"], BASE)
    assert uids(answer) == ["1.2"]
    assert answer.warnings == ["connector a failed: C-FIND failed: 0xC001"]


def test_all_failing_is_502_and_all_timing_out_is_504():
    a = ListConnector("a", [], fail=ConnectorError("down", "a"))
    b = ListConnector("b", [], fail=ConnectorTimeout("slow", "b"))
    with pytest.raises(AllConnectorsFailed) as err:
        engine(a, b).search(parse_search(Level.STUDY, []), ["a", "b"], BASE)
    assert err.value.status == 502 and err.value.connector == "a, b"
    c = ListConnector("c", [], fail=ConnectorTimeout("slow", "c"))
    with pytest.raises(AllConnectorsFailed) as err:
        engine(c).search(parse_search(Level.STUDY, []), ["c"], BASE)
    assert err.value.status == 504


def test_a_connector_that_never_answers_is_cut_at_its_request_timeout():
    never = threading.Event()
    slow = ListConnector("slow", [study("1.9")], block=never)
    fast = ListConnector("fast", [study("1.1")])
    answer = engine(slow, fast, request_timeout=0.2).search(
        parse_search(Level.STUDY, []), ["slow", "fast"], BASE
    )
    never.set()
    assert uids(answer) == ["1.1"]
    assert answer.warnings == ["connector slow failed: search timed out"]


def test_deactivated_criterion_skips_the_connector():
    a = ListConnector("a", [study("1.1")])
    b = ListConnector("b", [study("1.1")])
    eng = engine(a, b, deactivated={"a": ["STUDY_INSTANCE_UID"]})
    answer = eng.search(parse_search(Level.STUDY, [("StudyInstanceUID", "1.1")]), ["a", "b"], BASE)
    assert uids(answer) == ["1.1"]
    assert a.queries == [] and len(b.queries) == 1
    eng.search(parse_search(Level.STUDY, [("PatientName", "X*")]), ["a", "b"], BASE)
    assert len(a.queries) == 1  # other criteria still go to it


def test_unmatched_keys_are_filtered_in_memory():
    data = [
        study("1.1", **{"00100010": {"vr": "PN", "Value": [{"Alphabetic": "Doe^Jane"}]}}),
        study("1.2", **{"00100010": {"vr": "PN", "Value": [{"Alphabetic": "Roe^Rick"}]}}),
    ]
    a = ListConnector("a", data, unmatched=frozenset({0x00100010}))
    query = parse_search(Level.STUDY, [("PatientName", "doe*"), ("fuzzymatching", "true")])
    assert uids(engine(a).search(query, ["a"], BASE)) == ["1.1"]


def test_locate_and_retrieve_from_the_first_connector_holding_the_resource():
    a = ListConnector("a", [study("1.1")])
    b = ListConnector("b", [study("1.2")])
    eng = engine(a, b)
    parts = list(eng.retrieve_instances(ResourceRef("1.2"), ["a", "b"], "*"))
    assert [p.sop_instance_uid for p in parts] == ["1.2.3.4.5"]
    with pytest.raises(NotFound):
        eng.retrieve_instances(ResourceRef("9.9"), ["a", "b"], "*")


def test_an_empty_retrieval_stream_is_404_naming_nothing_internal():
    class Empty(ListConnector):
        def retrieve_instances(self, ref, ts):
            yield from ()

    with pytest.raises(NotFound):
        engine(Empty("a", [study("1.1")])).retrieve_instances(ResourceRef("1.1"), ["a"], "*")


def test_a_later_connector_fills_an_attribute_the_first_left_empty():
    a = ListConnector("a", [study("1.1", **{"00100010": {"vr": "PN"}})])
    b = ListConnector("b", [study("1.1", **{"00100010": {"vr": "PN", "Value": [{"Alphabetic": "Doe"}]}})])
    (data,) = engine(a, b).search(parse_search(Level.STUDY, []), ["a", "b"], BASE).datasets
    assert data["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "Doe"}]}


def test_a_key_the_connector_neither_matches_nor_returns_is_ignored_with_a_warning():
    a = ListConnector("a", [study("1.1")], unmatched=frozenset({0x00080080}))
    answer = engine(a).search(parse_search(Level.STUDY, [("InstitutionName", "X*")]), ["a"], BASE)
    assert uids(answer) == ["1.1"]
    assert answer.warnings == ["connector a cannot match on InstitutionName"]


def test_time_outs_of_connectors_asked_together_do_not_add_up():
    import time

    never = threading.Event()
    slow = [ListConnector(f"s{i}", [study("1.9")], block=never) for i in range(3)]
    started = time.monotonic()
    with pytest.raises(AllConnectorsFailed) as err:
        engine(*slow, request_timeout=0.5).search(
            parse_search(Level.STUDY, []), [c.id for c in slow], BASE
        )
    elapsed = time.monotonic() - started
    never.set()
    assert err.value.status == 504
    assert elapsed < 3.0  # one deadline (0.5 s + 1 s grace), not three in a row


def test_answers_with_invalid_uids_are_left_out_with_a_warning():
    a = ListConnector("a", [study("1.1"), study("1.2/../x")])
    answer = engine(a).search(parse_search(Level.STUDY, []), ["a"], BASE)
    assert uids(answer) == ["1.1"]
    assert answer.warnings == ["connector a sent 1 answers without valid UIDs (left out)"]


def test_search_answers_carry_no_bulk_data_uris():
    data = study("1.1", **{"00091010": {"vr": "OB", "BulkDataURI": "http://pacs/secret"}})
    answer = engine(ListConnector("a", [data])).search(
        parse_search(Level.STUDY, [("includefield", "all")]), ["a"], BASE
    )
    assert "00091010" not in answer.datasets[0]


def test_a_failure_inside_the_look_ahead_gives_a_partial_retrieval():
    from gateway.errors import PartialRetrieval

    class Partial(ListConnector):
        def retrieve_instances(self, ref, ts):
            yield Part10(b"one", "1.2.840.10008.1.2.1", "1.2.3.1")
            yield Part10(b"two", "1.2.840.10008.1.2.1", "1.2.3.2")
            raise PartialRetrieval("C-GET: 2 of 3 instances retrieved", self.id)

    got = engine(Partial("a", [study("1.1")])).retrieve_study_series_instance(
        ResourceRef("1.1"), ["a"], "*"
    )
    assert [p.data for p in got.parts] == [b"one", b"two"]
    assert got.partial and got.warnings == ["connector a: C-GET: 2 of 3 instances retrieved"]


def test_past_the_look_ahead_the_stream_is_cut_instead():
    class Failing(ListConnector):
        def retrieve_instances(self, ref, ts):
            yield Part10(b"x" * 10, "1.2.840.10008.1.2.1", "1.2.3.1")
            yield Part10(b"y" * 10, "1.2.840.10008.1.2.1", "1.2.3.2")
            raise ConnectorError("association aborted", self.id)

    eng = engine(Failing("a", [study("1.1")]))
    eng.lookahead = 5
    got = eng.retrieve_study_series_instance(ResourceRef("1.1"), ["a"], "*")
    assert not got.partial
    parts = got.parts
    assert next(parts).data == b"x" * 10
    assert next(parts).data == b"y" * 10
    with pytest.raises(ConnectorError):
        next(parts)
