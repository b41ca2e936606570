"""The console's supply pages: shipments (the site's indent, the depot's dispatch and
cancellation, the site's receipt with damaged and missing kits or a temperature
excursion and its logger file, the supply manager's quarantine decision), kits
and lots — who may open and do what, each action end to end checked through the
core's reads, refusals that change nothing, CSRF, and the blinding scan."""

from __future__ import annotations

import io
import re
import uuid
from datetime import timedelta

import pytest
from studyfiles import snapshot
from web_support import USERS

from core.actors import ADMIN
from core.clock import today
from core.supply import records as supply_records
from core.supply.receipt import receive_shipment
from core.supply.shipments import dispatch_shipment, request_shipment

_KEY = re.compile(r'name="idempotency_key" value="([^"]+)"')
ROLES = sorted(USERS)
# Who may do what (core.supply.shipments / receipt). A signed-in administrator is
# none of them: only the operator at the CLI has every power (core.actors).
DEPOT = {"depot_manager"}
SUPPLY_MANAGERS = {"project_manager", "depot_manager"}
AT_SITE_101 = {"site_coordinator", "investigator"}  # site roles of 101
BLINDED = ["site_coordinator", "investigator", "pharmacist", "investigator_102",
           "project_manager", "depot_manager", "admin"]


def actor(web, code: str):
    return web.web_user(code).actor


def requested(web, site: str = "101", per_type: int = 2) -> str:
    by = {"101": "5001", "102": "5005", "103": "5005"}[site]
    return request_shipment(web.db, site_code=site, kits_per_type=per_type,
                            actor=actor(web, by)).shipment_number


def dispatched(web, site: str = "101") -> str:
    number = requested(web, site)
    dispatch_shipment(web.db, shipment_number=number, carrier="DHL", tracking_number="JD1",
                      actor=actor(web, "7001"))
    return number


def quarantined(web) -> str:
    number = dispatched(web)
    receive_shipment(web.db, shipment_number=number, actor=actor(web, "5001"),
                     temperature_excursion=True, logger_data="max 14.5 C for 95 minutes")
    return number


def detail(web, number: str):
    return supply_records.shipment_detail(web.db, shipment_number=number, actor=ADMIN)


def statuses(web, number: str) -> dict[str, str]:
    return {kit.kit_number: kit.status for kit in detail(web, number).kits}


def form(browser, path: str) -> dict:
    """The page's idempotency key, read like a browser's form would send it."""
    answer = browser.get(path)
    assert answer.status_code == 200, path
    found = _KEY.search(browser.last_page)
    return {"idempotency_key": found.group(1)} if found else {}


def has_form(browser, path: str, action: str) -> bool:
    browser.get(path)
    return f'action="{path}/{action}"' in browser.last_page


def visible(page: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", page))


# --- who may open what -----------------------------------------------------------------------


@pytest.mark.parametrize("role", ROLES)
def test_every_role_opens_the_lists(web, role):
    own, other = requested(web, "101"), requested(web, "102")
    browser = web.as_role(role)
    for path in ("/shipments", "/kits", "/kits/lots", "/kits?status=available&location=101"):
        assert browser.get(path).status_code == 200, path
    site_role_elsewhere = role in ("pharmacist", "investigator_102")
    assert browser.get(f"/shipments/{own}").status_code == (403 if site_role_elsewhere
                                                           else 200)
    assert browser.get(f"/shipments/{other}").status_code == (
        403 if role in ("site_coordinator", "investigator") else 200)
    assert browser.get("/shipments/999999").status_code == 404
    assert browser.get("/quarantine").status_code == (200 if role in SUPPLY_MANAGERS else 403)


@pytest.mark.parametrize("role", ROLES)
def test_each_role_is_offered_the_forms_its_services_allow(web, role):
    fresh, travelling, held = requested(web), dispatched(web), quarantined(web)
    browser = web.as_role(role)
    if role in ("pharmacist", "investigator_102"):
        return  # site 101's shipments are not theirs to open (above)
    assert has_form(browser, f"/shipments/{fresh}", "dispatch") == (role in DEPOT)
    assert has_form(browser, f"/shipments/{fresh}", "cancel") == (role in SUPPLY_MANAGERS)
    assert has_form(browser, f"/shipments/{travelling}", "receive") == (role in AT_SITE_101)
    assert has_form(browser, f"/shipments/{held}", "quarantine") == (role in SUPPLY_MANAGERS)
    browser.get("/shipments")
    assert ('action="/shipments/request"' in browser.last_page) == (
        role in AT_SITE_101)


def test_a_site_role_sees_only_its_sites_shipments_and_kits(web):
    own, other = requested(web, "101"), requested(web, "102")
    browser = web.as_role("site_coordinator")
    listing = browser.text(browser.get("/shipments"))
    assert own in listing and other not in listing
    kits = browser.text(browser.get("/kits?location=102"))  # not its site: ignored
    assert "600041" not in kits and "600001" in kits
    assert "600121" not in browser.text(browser.get("/kits"))  # the depot's stock


# --- actions by role, refusals changing nothing ----------------------------------------------


@pytest.mark.parametrize("role", ROLES)
def test_dispatch_by_role(web, role):
    number = requested(web)
    browser = web.as_role(role)
    before = snapshot(web.db)
    keyed = form(browser, "/shipments") if role not in DEPOT else form(
        browser, f"/shipments/{number}")
    answer = browser.post(f"/shipments/{number}/dispatch",
                          {"carrier": "DHL", "tracking_number": "JD42", **keyed})
    if role in DEPOT:
        assert answer.status_code == 200
        assert detail(web, number).status == "dispatched"
    else:
        assert answer.status_code == 403
        assert snapshot(web.db) == before


@pytest.mark.parametrize("role", ROLES)
def test_receipt_by_role_and_site(web, role):
    number = dispatched(web)
    browser = web.as_role(role)
    before = snapshot(web.db)
    answer = browser.post(f"/shipments/{number}/receive", {"condition": "good"},
                          form_page="/shipments")
    if role in AT_SITE_101:
        assert answer.status_code == 200
        assert set(statuses(web, number).values()) == {"available"}
    else:
        assert answer.status_code == 403
        assert snapshot(web.db) == before


@pytest.mark.parametrize("role", ROLES)
def test_cancel_and_quarantine_by_role(web, role):
    fresh, held = requested(web), quarantined(web)
    browser = web.as_role(role)
    before = snapshot(web.db)
    cancel = browser.post(f"/shipments/{fresh}/cancel", {"reason": "site closed"},
                          form_page="/shipments")
    release = browser.post(f"/shipments/{held}/quarantine",
                           {"decision": "release", "reason": "logger within limits"},
                           form_page="/shipments")
    if role in SUPPLY_MANAGERS:
        assert (cancel.status_code, release.status_code) == (200, 200)
        assert detail(web, fresh).status == "cancelled"
        assert set(statuses(web, held).values()) == {"available"}
    else:
        assert (cancel.status_code, release.status_code) == (403, 403)
        assert snapshot(web.db) == before


@pytest.mark.parametrize("role", ROLES)
def test_a_stock_indent_by_role(web, role):
    browser = web.as_role(role)
    before = snapshot(web.db)
    answer = browser.post("/shipments/request", {"site": "101", "kits_per_type": "1"},
                          form_page="/shipments")
    if role in AT_SITE_101:
        assert answer.status_code == 200
        number = re.search(r"/shipments/(\d+)", browser.text(answer)).group(1)
        assert (detail(web, number).destination, len(detail(web, number).kits)) == ("101", 2)
    else:
        assert answer.status_code == 403
        assert snapshot(web.db) == before


# --- the flows, end to end -------------------------------------------------------------------


def test_the_depot_dispatches_with_carrier_tracking_and_date(web):
    number = requested(web)
    browser = web.as_role("depot_manager")
    keyed = form(browser, f"/shipments/{number}")
    assert f'value="{today().isoformat()}"' in browser.last_page  # the date defaults to today
    sent = {"carrier": "DHL Express", "tracking_number": "JD014600", "dispatched_on":
            today().isoformat(), **keyed}
    answer = browser.post(f"/shipments/{number}/dispatch", sent)
    assert answer.status_code == 200
    page = browser.text(answer)
    confirmation = re.search(r"Confirmation number: (\S+)<", page).group(1)
    shown = detail(web, number)
    assert (shown.status, shown.carrier, shown.tracking_number, shown.dispatched_on) == (
        "dispatched", "DHL Express", "JD014600", today())
    assert set(statuses(web, number).values()) == {"in_transit"}
    # the same form again (a double submit, a reload) acts once and says the same
    again = browser.post(f"/shipments/{number}/dispatch", sent)
    assert again.status_code == 200 and confirmation in browser.text(again)


def test_the_site_receives_with_a_damaged_and_a_missing_kit(web):
    number = dispatched(web)
    kits = sorted(statuses(web, number))
    browser = web.as_role("site_coordinator")
    keyed = form(browser, f"/shipments/{number}")
    assert f'id="damaged-{kits[0]}"' in browser.last_page
    assert f'<label for="damaged-{kits[0]}">' in browser.last_page
    answer = browser.post(f"/shipments/{number}/receive", {
        "condition": "problems", "damaged": [kits[0]], "missing_text": f" {kits[1]}\n",
        **keyed})
    assert answer.status_code == 200
    assert statuses(web, number) == {kits[0]: "damaged", kits[1]: "missing",
                                     kits[2]: "available", kits[3]: "available"}
    outcomes = {kit.kit_number: kit.outcome for kit in detail(web, number).kits}
    assert outcomes[kits[0]] == "damaged" and outcomes[kits[1]] == "missing"
    at_site = supply_records.kits_page(web.db, actor=ADMIN, location="101",
                                       status="available", limit=500)
    assert {kits[2], kits[3]} <= {kit.kit_number for kit in at_site.items}


def test_an_excursion_with_a_logger_file_quarantines_and_is_released(web):
    number = dispatched(web)
    browser = web.as_role("investigator")
    keyed = form(browser, f"/shipments/{number}")
    logger = (io.BytesIO(b'{"max_c": 14.5, "minutes": 95}'), "logger.json")
    answer = browser.post(f"/shipments/{number}/receive", {
        "condition": "problems", "temperature_excursion": "1", "logger_file": logger, **keyed},
        content_type="multipart/form-data")
    assert answer.status_code == 200
    assert set(statuses(web, number).values()) == {"quarantined"}
    assert supply_records.shipment_logger_data(web.db, shipment_number=number, actor=ADMIN) \
        == {"max_c": 14.5, "minutes": 95}
    download = browser.get(f"/shipments/{number}/logger")
    assert download.status_code == 200 and download.mimetype == "application/json"
    assert "attachment" in download.headers["Content-Disposition"]

    manager = web.as_role("project_manager")
    assert number in manager.text(manager.get("/quarantine"))
    keyed = form(manager, f"/shipments/{number}")
    answer = manager.post(f"/shipments/{number}/quarantine",
                          {"decision": "release", "reason": "within limits", **keyed})
    assert answer.status_code == 200
    assert set(statuses(web, number).values()) == {"available"}
    assert number not in manager.text(manager.get("/quarantine"))


def test_the_supply_manager_rejects_quarantined_kits(web):
    number = quarantined(web)
    browser = web.as_role("depot_manager")
    keyed = form(browser, f"/shipments/{number}")
    answer = browser.post(f"/shipments/{number}/quarantine", {"decision": "reject", **keyed})
    assert answer.status_code == 200
    assert set(statuses(web, number).values()) == {"damaged"}


def test_a_shipment_is_cancelled_with_a_reason(web):
    number = requested(web)
    browser = web.as_role("depot_manager")
    keyed = form(browser, f"/shipments/{number}")
    before = snapshot(web.db)
    assert browser.post(f"/shipments/{number}/cancel", {"reason": " ", **keyed}) \
        .status_code == 422
    assert snapshot(web.db) == before
    answer = browser.post(f"/shipments/{number}/cancel", {"reason": "site on hold", **keyed})
    assert answer.status_code == 200
    assert detail(web, number).status == "cancelled"
    depot = supply_records.kits_page(web.db, actor=ADMIN, location="90", status="at_depot",
                                     limit=500)
    assert set(statuses(web, number)) <= {kit.kit_number for kit in depot.items}


# --- refusals change nothing -----------------------------------------------------------------


def _refused(web, browser, path, data, status, text=None, **kwargs):
    before = snapshot(web.db)
    answer = browser.post(path, data, **kwargs)
    assert answer.status_code == status, browser.text(answer)
    if text is not None:
        assert text in visible(browser.text(answer))
    assert snapshot(web.db) == before
    return answer


def test_dispatch_refusals(web):
    number = requested(web)
    browser = web.as_role("depot_manager")
    keyed = form(browser, f"/shipments/{number}")
    tomorrow = (today() + timedelta(days=1)).isoformat()
    good = {"carrier": "DHL", "tracking_number": "JD1", **keyed}
    _refused(web, browser, f"/shipments/{number}/dispatch",
             {**good, "dispatched_on": tomorrow}, 422, "The date must be a valid day")
    _refused(web, browser, f"/shipments/{number}/dispatch",
             {**good, "dispatched_on": "2026-02-30"}, 422, "The date must be a valid day")
    _refused(web, browser, f"/shipments/{number}/dispatch",
             {**good, "dispatched_on": (today() - timedelta(days=3)).isoformat()}, 422)
    _refused(web, browser, f"/shipments/{number}/dispatch", {**good, "carrier": ""}, 422,
             "Fill in every required field")
    answer = browser.post(f"/shipments/{number}/dispatch", good)
    assert answer.status_code == 200
    # the dispatched shipment offers no form: a second dispatch (another key) is refused
    assert not has_form(browser, f"/shipments/{number}", "dispatch")
    keyed = {"idempotency_key": uuid.uuid4().hex}
    _refused(web, browser, f"/shipments/{number}/dispatch", {**good, **keyed}, 409,
             "already been dispatched")
    _refused(web, browser, f"/shipments/{number}/cancel", {"reason": "late", **keyed}, 409)
    _refused(web, browser, "/shipments/999999/dispatch", good, 404)


def test_receipt_refusals(web):
    number, elsewhere, fresh = dispatched(web), dispatched(web, "102"), requested(web)
    browser = web.as_role("site_coordinator")
    keyed = form(browser, f"/shipments/{number}")
    path = f"/shipments/{number}/receive"
    _refused(web, browser, f"/shipments/{elsewhere}/receive", {"condition": "good", **keyed},
             403)
    _refused(web, browser, f"/shipments/{fresh}/receive", {"condition": "good", **keyed}, 409,
             "not been dispatched")
    _refused(web, browser, path, {**keyed}, 422, "Say how the shipment arrived")
    _refused(web, browser, path, {"condition": "problems", **keyed}, 422, "Name the damaged")
    _refused(web, browser, path, {"condition": "good", "damaged_text": "600001", **keyed}, 422,
             "Choose one")
    _refused(web, browser, path, {"condition": "problems", "damaged_text": "600001", **keyed},
             422, "Not in this shipment: kit 600001")
    _refused(web, browser, path, {"condition": "problems", "damaged_text": "12ab", **keyed},
             422, "digits only")
    kit = min(statuses(web, number))
    _refused(web, browser, path, {"condition": "problems", "damaged": [kit],
                                  "missing_text": kit, **keyed}, 422,
             f"Kit {kit} cannot be both damaged and missing")
    # a logger file without an excursion is the service's refusal
    _refused(web, browser, path, {"condition": "problems", "damaged": [kit],
                                  "logger_file": (io.BytesIO(b"12 C"), "log.txt"), **keyed},
             422, "goes with a temperature excursion", content_type="multipart/form-data")
    assert set(statuses(web, number).values()) == {"in_transit"}


@pytest.mark.parametrize("content, message", [
    (b"\x89PNG\r\n\x1a\n\x00\x00binary", "not a UTF-8 text file"),
    (b"\xff\xfe\x00t\x00e\x00m\x00p", "not a UTF-8 text file"),
    (b"   \n", "The logger file is empty"),
    (b"x" * (1024 * 1024 + 1), "larger than 1 MiB"),
])
def test_a_bad_logger_file_is_refused_and_nothing_changes(web, content, message):
    number = dispatched(web)
    browser = web.as_role("site_coordinator")
    keyed = form(browser, f"/shipments/{number}")
    answer = _refused(web, browser, f"/shipments/{number}/receive", {
        "condition": "problems", "temperature_excursion": "1",
        "logger_file": (io.BytesIO(content), "logger.bin"), **keyed}, 422, message,
        content_type="multipart/form-data")
    assert 'action="/shipments/' in browser.text(answer)  # the form, to try again


def test_a_receipt_body_beyond_the_upload_limit_is_refused_before_it_is_read(web):
    number = dispatched(web)
    browser = web.as_role("site_coordinator")
    keyed = form(browser, f"/shipments/{number}")
    _refused(web, browser, f"/shipments/{number}/receive", {
        "condition": "problems", "temperature_excursion": "1",
        "logger_file": (io.BytesIO(b"1" * (2 * 1024 * 1024)), "big.csv"), **keyed}, 413,
        "larger than 1 MiB", content_type="multipart/form-data")
    assert set(statuses(web, number).values()) == {"in_transit"}


def test_the_api_keeps_its_own_body_limit(web):
    """The receipt's upload limit is the receipt's: the API still answers its own 413."""
    from core.api_clients import add_client

    token = add_client(web.db, name="depot", role="depot_manager", sites=[], actor=ADMIN).token
    answer = web.app.test_client().post(
        "/api/v1/shipments/500001/dispatch", data=b"{" + b" " * (1024 * 1024 + 10) + b"}",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json",
                 "Idempotency-Key": "k1"})
    assert answer.status_code == 413 and answer.mimetype == "application/problem+json"


def test_quarantine_refusals(web):
    number, fresh = quarantined(web), requested(web)
    browser = web.as_role("project_manager")
    keyed = form(browser, f"/shipments/{number}")
    _refused(web, browser, f"/shipments/{number}/quarantine", {"decision": "", **keyed}, 422,
             "Choose release or reject")
    _refused(web, browser, f"/shipments/{fresh}/quarantine", {"decision": "release", **keyed},
             409, "no kits in quarantine")


def test_a_post_without_its_csrf_token_is_refused_and_changes_nothing(web):
    number, travelling = requested(web), dispatched(web)
    before = snapshot(web.db)
    depot = web.as_role("depot_manager")
    depot.get(f"/shipments/{number}")
    assert depot.post(f"/shipments/{number}/dispatch", {"carrier": "DHL",
                                                        "tracking_number": "JD1"},
                      csrf=False).status_code == 400
    assert depot.post(f"/shipments/{number}/cancel", {"reason": "x"}, csrf=False) \
        .status_code == 400
    site = web.as_role("site_coordinator")
    assert site.post(f"/shipments/{travelling}/receive", {"condition": "good"},
                     csrf=False).status_code == 400
    assert site.post("/shipments/request", {"site": "101"}, csrf=False).status_code == 400
    assert snapshot(web.db) == before


# --- blinding --------------------------------------------------------------------------------

WORDS = ("Drug 10 mg", "Placebo", "KA", "KP", "LA1", "LP1")
# An arm code as a value: a cell, an option, a field's value.
ARM_CODE = re.compile(r'>\s*(A|P)\s*<|value="(A|P)"')


def leaks(page: str) -> list[str]:
    found = [word for word in WORDS if re.search(rf"(?<![\w-]){re.escape(word)}(?![\w-])", page)]
    return found + [m.group(0) for m in ARM_CODE.finditer(page)]


def reachable_pages(web) -> list[str]:
    """Every supply page, in every state a shipment can be in."""
    numbers = [requested(web), dispatched(web), quarantined(web), requested(web, "102")]
    received = dispatched(web)
    receive_shipment(web.db, shipment_number=received, actor=actor(web, "5001"),
                     damaged=[min(statuses(web, received))])
    numbers.append(received)
    pages = ["/shipments", "/quarantine", "/kits/lots", "/kits/lots?location=101",
             "/kits?status=quarantined", "/kits?location=transit"]
    pages += [f"/shipments/{n}" for n in numbers]
    pages += [f"/shipments?status={s}" for s in ("requested", "dispatched", "received")]
    return pages


@pytest.mark.parametrize("role", BLINDED)
def test_no_blinded_page_shows_an_arm_a_kit_type_or_a_lot(web, role):
    pages = reachable_pages(web)
    browser = web.as_role(role)
    seen = 0
    for path in pages:
        answer = browser.get(path)
        if answer.status_code == 200:
            seen += 1
        assert not leaks(browser.text(answer)), (role, path, leaks(browser.text(answer)))
    # every page of the kit list, walked to its end
    path = "/kits"
    while path:
        text = browser.text(browser.get(path))
        assert not leaks(text), (role, path)
        found = re.search(r'href="(/kits\?[^"]*after=[^"]+)"', text)
        path = found.group(1).replace("&amp;", "&") if found else None
    assert seen >= 4
    # a result page and a refusal are scanned too
    if role in SUPPLY_MANAGERS:
        number = requested(web)
        answer = browser.post(f"/shipments/{number}/cancel", {"reason": "test"},
                              form_page=f"/shipments/{number}")
        assert answer.status_code == 200 and not leaks(browser.text(answer))
        answer = browser.post("/shipments/999999/cancel", {"reason": "test"})
        assert not leaks(browser.text(answer))


def test_the_unblinded_statistician_sees_kit_types_and_lots(web):
    number = requested(web)
    browser = web.as_role("unblinded_statistician")
    shipment = browser.text(browser.get(f"/shipments/{number}"))
    assert re.search(r"<td>KA</td>", shipment) and re.search(r"<td>LP1</td>", shipment)
    kits = browser.text(browser.get("/kits?location=90"))
    assert "<td>KA</td>" in kits and "<td>LA1</td>" in kits
    lots = browser.text(browser.get("/kits/lots"))
    assert "<td>LA1</td>" in lots and "<td>KP</td>" in lots


def test_the_blinded_lot_view_counts_by_expiry_date(web):
    browser = web.as_role("project_manager")
    text = visible(browser.text(browser.get("/kits/lots")))
    assert "Lot codes and kit types are not shown" in text
    assert "Jun 30, 2031" in text and "40" in text


def test_the_pages_speak_the_readers_language(web):
    number = dispatched(web)
    browser = web.as_role("site_coordinator", language="fr")
    text = browser.text(browser.get(f"/shipments/{number}"))
    assert 'lang="fr"' in text and "Confirmer la réception" in text
    assert "Expéditions" in browser.text(browser.get("/shipments"))
