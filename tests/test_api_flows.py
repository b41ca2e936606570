"""The HTTP API end to end (SPEC §10): what an EDC, a depot system and a CTMS do
through it, each answer checked against the database the phone uses."""

from __future__ import annotations

from sqlalchemy import func, select, text

from core import append_only
from core.actors import Actor
from core.audit import verify
from core.models import AuditEvent, Kit, Randomization, Shipment, Subject
from core.supply.shipments import request_shipment

ELIGIBLE = {"INC1": True, "INC2": True, "EXC1": True}


def randomized_subject(client, site="101", sex="F", age="LT65"):
    subject = client.post("/subjects", {"site": site}).json["subject_number"]
    answer = client.post(f"/subjects/{subject}/randomize",
                         {"factors": {"SEX": sex, "AGE": age}, "eligibility": ELIGIBLE})
    assert answer.status_code == 200, answer.json
    return subject, answer.json


def test_screen_randomize_dispense_confirm_as_an_edc(api, monkeypatch):
    edc = api.client("edc-101")
    screened = edc.post("/subjects", {"site": "101"}, key="screen-1")
    assert screened.status_code == 201
    subject = screened.json["subject_number"]
    assert subject.startswith("101") and screened.json["status"] == "screened"
    randomized = edc.post(f"/subjects/{subject}/randomize",
                          {"factors": {"SEX": "F", "AGE": "GE65"}, "eligibility": ELIGIBLE},
                          key="rand-1").json
    assert set(randomized) == {"subject_number", "event", "randomization_number", "kits",
                               "visit", "confirmation"}  # no arm for a blinded client
    with api.db.sessions() as session:
        stored = session.scalars(select(Randomization)).one()
        kit = session.scalars(select(Kit).where(Kit.kit_number == randomized["kits"][0])).one()
        assert stored.randomization_number == randomized["randomization_number"]
        assert kit.subject_id == stored.subject_id and kit.assigned_by == "api:edc-101"
    record = edc.get(f"/subjects/{subject}").json
    assert [h["to_status"] for h in record["history"]] == ["screened", "randomized"]
    assert [v["status"] for v in record["visits"]] == ["done", "due", "upcoming"]
    assert record["kits"][0]["kit_number"] == randomized["kits"][0]
    assert "kit_type" not in record["kits"][0] and "lot" not in record["kits"][0]

    confirmed = edc.post(f"/kits/{randomized['kits'][0]}/confirm", {"subject": subject})
    assert confirmed.status_code == 200 and confirmed.json["remaining"] == []
    again = edc.post(f"/kits/{randomized['kits'][0]}/confirm", {"subject": subject})
    assert again.status_code == 409 and again.json["code"] == "kit_already_confirmed"

    # Four weeks later the EDC's visit 2 page dispenses; naming the wrong visit is refused.
    day_28 = (stored.randomized_at.date().toordinal() + 28)
    from datetime import date

    monkeypatch.setenv("IVRS_TODAY", date.fromordinal(day_28).isoformat())
    wrong = edc.post(f"/subjects/{subject}/dispense", {"visit": "V3"})
    assert wrong.status_code == 409 and wrong.json["code"] == "visit_not_due"
    dispensed = edc.post(f"/subjects/{subject}/dispense", {"visit": "V2"})
    assert dispensed.status_code == 200 and len(dispensed.json["kits"]) == 2
    assert api.client("stats").get(f"/subjects/{subject}").json["kits"][1]["kit_type"] in (
        "KA", "KP")

    status = edc.post(f"/subjects/{subject}/status",
                      {"status": "discontinued", "reason": "withdrew consent"})
    assert status.status_code == 200 and status.json["status"] == "discontinued"
    with api.db.sessions() as session:
        assert verify(session, session.scalar(select(Subject.study_id))) is None
        actors = set(session.scalars(select(AuditEvent.actor)))
    assert "api:edc-101" in actors  # the client is the actor of its audit rows


def test_refusals_carry_the_codes_the_phone_speaks(api):
    edc = api.client("edc-101")
    subject = edc.post("/subjects", {"site": "101"}).json["subject_number"]
    no = edc.post(f"/subjects/{subject}/randomize",
                  {"factors": {"SEX": "F", "AGE": "LT65"},
                   "eligibility": {"INC1": True, "INC2": False}})
    assert no.status_code == 409 and no.json["code"] == "not_eligible"
    assert no.headers["Content-Type"] == "application/problem+json"
    unknown = edc.post("/subjects/1019999/randomize", {"factors": {}, "eligibility": ELIGIBLE})
    assert unknown.status_code == 404 and unknown.json["code"] == "unknown_subject"
    level = edc.post(f"/subjects/{subject}/randomize",
                     {"factors": {"SEX": "X", "AGE": "LT65"}, "eligibility": ELIGIBLE})
    assert level.status_code == 422 and level.json["code"] == "bad_level"
    other_site = api.client("pharmacy-102").get(f"/subjects/{subject}")
    assert other_site.status_code == 403 and other_site.json["code"] == "wrong_site"
    depot = api.client("depot").post("/subjects", {"site": "101"})
    assert depot.status_code == 403 and depot.json["code"] == "not_allowed"


def test_a_depot_dispatches_and_the_site_receives_with_a_damaged_kit(api):
    request_shipment(api.db, site_code="103", kits_per_type=2,
                     actor=Actor(role="investigator", user_code="5005",
                                 site_codes=frozenset({"102", "103"})))
    depot = api.client("depot")
    [shipment] = depot.get("/shipments").json["shipments"]
    assert shipment["status"] == "requested" and shipment["kits"] == 4
    assert "kit_type" not in shipment
    early = depot.post(f"/shipments/{shipment['shipment_number']}/dispatch",
                       {"carrier": "DHL", "tracking_number": "JD0001", "date": "2020-01-01"})
    assert early.status_code == 409 and early.json["code"] == "bad_date"
    dispatched = depot.post(f"/shipments/{shipment['shipment_number']}/dispatch",
                            {"carrier": "DHL", "tracking_number": "JD0001"})
    assert dispatched.status_code == 200 and dispatched.json["status"] == "dispatched"
    with api.db.sessions() as session:
        kits = sorted(session.scalars(select(Kit.kit_number).join(
            Shipment, Shipment.id == Kit.shipment_id)))
    site = api.client("edc-all")
    received = site.post(f"/shipments/{shipment['shipment_number']}/receive",
                         {"damaged": [kits[0]]})
    assert received.status_code == 200
    assert (received.json["received"], received.json["damaged"]) == (3, 1)
    stock = site.get("/inventory?site=103").json["sites"]
    assert stock == [{"site": "103", "available": 43, "quarantined": 0, "incoming": 0}]


def test_signed_emergency_unblinding_reveals_the_arm_to_the_investigator_only(api):
    investigator = api.client("edc-inv-101")
    subject, _ = randomized_subject(investigator)
    wrong_pin = investigator.post(f"/subjects/{subject}/unblind", {
        "reason": "medical_emergency", "signature": {"user": "5002", "pin": "9999"}})
    assert wrong_pin.status_code == 403 and wrong_pin.json["code"] == "bad_credentials"
    someone_else = investigator.post(f"/subjects/{subject}/unblind", {
        "reason": "medical_emergency", "signature": {"user": "5005", "pin": "97531"}})
    assert someone_else.status_code == 403  # not at the client's site
    done = investigator.post(f"/subjects/{subject}/unblind", {
        "reason": "medical_emergency", "signature": {"user": "5002", "pin": "1357"}})
    assert done.status_code == 200 and done.json["status"] == "unblinded"
    with api.db.sessions() as session:
        arm = session.execute(select(Randomization.arm_id)).scalar()
        from core.models import Arm

        assert done.json["arms"][0]["arm"] == session.get(Arm, arm).name
        signer = session.scalars(select(AuditEvent.actor).where(
            AuditEvent.action == "subject_unblinded")).one()
    assert signer == "user:5002"  # a signature is a person's


def test_the_unblinded_client_sees_arms_and_audits_its_report(api):
    subject, _ = randomized_subject(api.client("edc-101"))
    stats = api.client("stats")
    assert stats.get(f"/subjects/{subject}").json["randomizations"][0]["arm"] in ("A", "P")
    assert stats.get("/study").json["arms"] == ["A", "P"]
    assert "arms" not in api.client("ctms").get("/study").json
    report = stats.get("/reports/subjects")
    assert report.status_code == 200 and b",arm\n" in report.data.splitlines(True)[0]
    with api.db.sessions() as session:
        assert session.scalar(select(func.count()).where(
            AuditEvent.action == "unblinded_view", AuditEvent.actor == "api:stats")) == 1
    blinded = api.client("ctms").get("/reports/subjects?format=xlsx")
    assert blinded.status_code == 200 and blinded.data[:2] == b"PK"


def test_research_subject_is_valid_fhir_r5(api):
    from fhir.resources.researchsubject import ResearchSubject

    subject, _ = randomized_subject(api.client("edc-101"))
    blinded = api.client("ctms").get(f"/fhir/ResearchSubject/{subject}")
    assert blinded.headers["Content-Type"].startswith("application/fhir+json")
    resource = ResearchSubject.model_validate(blinded.json)
    assert resource.id == subject and resource.assignedComparisonGroup is None
    states = [p.subjectState.coding[0].code for p in resource.progress if p.subjectState]
    assert states == ["screening", "on-study"]
    unblinded = ResearchSubject.model_validate(
        api.client("stats").get(f"/fhir/ResearchSubject/{subject}").json)
    assert unblinded.assignedComparisonGroup in ("A", "P")


def test_pages_walk_every_subject_once(api):
    edc = api.client("edc-all")
    made = [edc.post("/subjects", {"site": site}).json["subject_number"]
            for site in ("101", "102", "101", "103", "102")]
    seen, after = [], None
    while True:
        page = edc.get("/subjects?limit=2" + (f"&after={after}" if after else "")).json
        seen += [s["subject_number"] for s in page["subjects"]]
        after = page.get("next_after")
        if after is None:
            break
    assert seen == sorted(made)
    only_101 = api.client("edc-101").get("/subjects").json["subjects"]
    assert {s["site"] for s in only_101} == {"101"}


def test_the_document_describes_every_route_served(api):
    document = api.app.test_client().get("/api/v1/openapi.json").json
    assert document["openapi"].startswith("3.1")
    served = {(rule.rule, method) for rule in api.app.url_map.iter_rules()
              if rule.rule.startswith("/api/v1/") and rule.endpoint != "api.openapi_json"
              for method in rule.methods - {"HEAD", "OPTIONS"}}
    described = {(path.replace("{", "<").replace("}", ">"), method.upper())
                 for path, operations in document["paths"].items() for method in operations}
    assert served == described


def test_the_unblinding_reasons_are_the_cores():
    from typing import get_args

    from core.unblinding import REASONS
    from ivrs.api.models import UnblindIn

    assert get_args(UnblindIn.model_fields["reason"].annotation) == REASONS


def test_eligibility_from_the_edc_gates_randomization_on_every_channel(edc_api):
    edc = edc_api.client("edc-101")
    assert edc.get("/study").json["eligibility_source"] == "edc"
    subject = edc.post("/subjects", {"site": "101"}).json["subject_number"]
    factors = {"factors": {"SEX": "M", "AGE": "GE65"}}
    early = edc.post(f"/subjects/{subject}/randomize", factors)
    assert early.status_code == 409 and early.json["code"] == "eligibility_incomplete"
    assert early.json["params"]["missing"] == ["INC1", "INC2", "EXC1"]
    partial = edc.post(f"/subjects/{subject}/eligibility", {"answers": {"INC1": True}})
    assert partial.status_code == 200
    assert partial.json["missing"] == ["INC2", "EXC1"] and not partial.json["all_met"]
    assert edc.get(f"/subjects/{subject}").json["eligibility"]["answers"] == {"INC1": True}
    done = edc.post(f"/subjects/{subject}/randomize",
                    {**factors, "eligibility": {"INC2": True, "EXC1": True}})
    assert done.status_code == 200, done.json
    not_from_edc = edc.post(f"/subjects/{subject}/eligibility", {"answers": {"INC1": False}})
    assert not_from_edc.status_code == 409 and not_from_edc.json["code"] == "subject_randomized"


def test_eligibility_from_the_phone_refuses_the_edcs_answers(api):
    edc = api.client("edc-101")
    subject = edc.post("/subjects", {"site": "101"}).json["subject_number"]
    refused = edc.post(f"/subjects/{subject}/eligibility", {"answers": {"INC1": True}})
    assert refused.status_code == 409 and refused.json["code"] == "eligibility_not_from_edc"
    assert "eligibility" not in edc.get(f"/subjects/{subject}").json


def test_the_audit_chain_is_verified_for_the_sponsor_only(api):
    randomized_subject(api.client("edc-101"))
    answer = api.client("ctms").get("/audit/verify")
    assert answer.status_code == 200 and answer.json == {"intact": True}
    assert api.client("edc-101").get("/audit/verify").status_code == 403
    with api.db.engine.begin() as conn:  # the tamperer is a DBA: the triggers go first
        for statement in append_only.drop_statements(api.db.engine.dialect.name):
            conn.execute(text(statement))
    with api.db.transaction() as session:  # a row removed from the middle of the chain
        middle = session.scalars(select(AuditEvent).order_by(AuditEvent.seq)
                                 .offset(1).limit(1)).one()
        session.execute(AuditEvent.__table__.delete().where(AuditEvent.id == middle.id))
    broken = api.client("ctms").get("/audit/verify").json
    assert broken["intact"] is False and "rows were removed" in broken["problem"]
