"""core.supply.records, the read models the web console's supply pages show: one
shipment with its kits, kits and lot counts a page at a time, shipments in
quarantine — each for one actor, by site, blinded by role."""

from __future__ import annotations

import pytest

from core.actors import ADMIN
from core.errors import NotFound, Refused
from core.supply import records as supply_records
from core.supply.receipt import receive_shipment
from core.supply.shipments import dispatch_shipment, request_shipment

PER_PLACE = 40  # tests/api_support.stock: 20 kits of each of two kit types per place


def actor(web, code):
    return web.web_user(code).actor


def walk(fetch, **kwargs) -> list:
    lines, after = [], None
    while True:
        found = fetch(after=after, **kwargs)
        lines += found.items
        if found.next_after is None:
            return lines
        after = found.next_after


def excursion_shipment(web) -> str:
    number = request_shipment(web.db, site_code="101", kits_per_type=2,
                              actor=actor(web, "5001")).shipment_number
    dispatch_shipment(web.db, shipment_number=number, carrier="DHL", tracking_number="T1",
                      actor=actor(web, "7001"))
    receive_shipment(web.db, shipment_number=number, actor=actor(web, "5001"),
                     temperature_excursion=True, logger_data='{"max_c": 12}')
    return number


def test_a_site_role_reads_its_own_sites_kits_blinded(web):
    coordinator = actor(web, "5001")
    kits = walk(lambda **kw: supply_records.kits_page(web.db, actor=coordinator, limit=7, **kw))
    assert len(kits) == PER_PLACE and {k.location for k in kits} == {"101"}
    assert len({k.kit_number for k in kits}) == PER_PLACE  # no kit twice across pages
    assert all(k.kit_type is None and k.lot is None for k in kits)
    with pytest.raises(Refused) as refused:
        supply_records.kits_page(web.db, actor=coordinator, location="102")
    assert refused.value.code == "wrong_site"
    assert supply_records.kit_locations(web.db, actor=coordinator) == ["101"]


def test_the_sponsor_reads_every_place_and_only_the_unblinded_see_types(web):
    manager = actor(web, "5006")
    every = walk(lambda **kw: supply_records.kits_page(web.db, actor=manager, limit=50, **kw))
    assert len(every) == 4 * PER_PLACE and all(k.kit_type is None for k in every)
    statistician = actor(web, "5004")
    depot = supply_records.kits_page(web.db, actor=statistician, location="90", limit=500)
    assert {(k.kit_type, k.lot) for k in depot.items} == {("KA", "LA1"), ("KP", "LP1")}
    assert supply_records.kit_locations(web.db, actor=manager) == ["90", "101", "102", "103"]


def test_kits_filter_by_status_and_in_transit(web):
    number = request_shipment(web.db, site_code="102", kits_per_type=1,
                              actor=actor(web, "5005")).shipment_number
    dispatch_shipment(web.db, shipment_number=number, carrier="DHL", tracking_number="T1",
                      actor=actor(web, "7001"))
    travelling = supply_records.kits_page(web.db, actor=ADMIN,
                                          location=supply_records.IN_TRANSIT)
    assert len(travelling.items) == 2
    assert all(k.status == "in_transit" and k.shipment_number == number
               for k in travelling.items)
    in_transit = supply_records.kits_page(web.db, actor=ADMIN, status="in_transit")
    assert [k.kit_number for k in in_transit.items] == [k.kit_number for k in travelling.items]
    # the destination site does not hold them yet
    site_view = supply_records.kits_page(web.db, actor=actor(web, "5005"), status="in_transit")
    assert site_view.items == []


def test_lot_counts_blinded_by_expiry_date_and_unblinded_by_lot(web):
    blinded = walk(lambda **kw: supply_records.lots_page(web.db, actor=actor(web, "7001"),
                                                         limit=1, **kw))
    assert [(line.location, line.lot, line.kit_type) for line in blinded] == [
        ("101", None, None), ("102", None, None), ("103", None, None), ("90", None, None)]
    assert all(line.counts == {"available": PER_PLACE} for line in blinded[:3])
    assert blinded[3].counts == {"at_depot": PER_PLACE}
    unblinded = walk(lambda **kw: supply_records.lots_page(web.db, actor=actor(web, "5004"),
                                                           limit=3, **kw))
    assert len(unblinded) == 8 and {line.lot for line in unblinded} == {"LA1", "LP1"}
    assert sum(line.total for line in unblinded) == 4 * PER_PLACE
    mine = supply_records.lots_page(web.db, actor=actor(web, "5005"), location="103")
    assert [(line.location, line.total) for line in mine.items] == [("103", PER_PLACE)]
    # a cursor that is not one of ours starts from the beginning rather than failing
    again = supply_records.lots_page(web.db, actor=ADMIN, after="not-a-cursor")
    assert len(again.items) == 4


def test_shipment_detail_for_its_sites_readers(web):
    number = request_shipment(web.db, site_code="101", kits_per_type=2,
                              actor=actor(web, "5001")).shipment_number
    detail = supply_records.shipment_detail(web.db, shipment_number=number,
                                            actor=actor(web, "7001"))
    assert (detail.origin, detail.destination, detail.status) == ("90", "101", "requested")
    assert len(detail.kits) == 4 and all(k.kit_type is None for k in detail.kits)
    unblinded = supply_records.shipment_detail(web.db, shipment_number=number,
                                               actor=actor(web, "5004"))
    assert sorted(k.kit_type for k in unblinded.kits) == ["KA", "KA", "KP", "KP"]
    with pytest.raises(Refused) as refused:
        supply_records.shipment_detail(web.db, shipment_number=number, actor=actor(web, "5003"))
    assert refused.value.code == "wrong_site"
    for unknown in ("999999", "abc", ""):
        with pytest.raises(NotFound):
            supply_records.shipment_detail(web.db, shipment_number=unknown, actor=ADMIN)


def test_quarantine_lists_shipments_awaiting_a_decision(web):
    number = excursion_shipment(web)
    found = supply_records.quarantine_page(web.db, actor=actor(web, "5006"))
    assert [(line.shipment_number, line.site, line.quarantined, line.has_logger_data)
            for line in found.items] == [(number, "101", 4, True)]
    assert supply_records.shipment_logger_data(web.db, shipment_number=number,
                                               actor=ADMIN) == {"max_c": 12}
    with pytest.raises(Refused):
        supply_records.quarantine_page(web.db, actor=actor(web, "5001"))
