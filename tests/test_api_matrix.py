"""Every API route x every role x the client's own site and another site (SPEC §10,
§4): the status each gets, written out below as the rules say, not read from the
code under test; and a scan of every answer a blinded client gets, and of every
event payload a blinded subscription gets, for an arm, a kit type or a lot.

Each case gets fresh records made by the study's own people (a coordinator of the
site, the depot) so that no case depends on another's order. The clients under
test act at site 101 (site roles) or everywhere (the sponsor's and the depot's):
"own" is a record of site 101, "other" one of site 102.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta

from api_support import CLIENTS, EDC_ELIGIBILITY, EXPIRY, STUDY, make_api
from sqlalchemy import select

from core.actors import ADMIN, Actor
from core.api_clients import add_client
from core.clock import utcnow
from core.event_deliveries import claim_next, expand_pending, record_delivered
from core.events import EVENT_TYPES
from core.models import Approval, Kit, Site
from core.mrl import import_mrl
from core.supply.kit_import import import_kits
from core.supply.returns import declare_return
from core.supply.shipments import request_shipment
from core.webhook_subscriptions import add_subscription
from ivrs.api.registry import OPERATIONS
from ivrs.demo.scenario import write_demo_mrl

ELIGIBLE = {"INC1": True, "INC2": True, "EXC1": True}
STRATA = itertools.cycle([{"SEX": sex, "AGE": age} for sex in ("M", "F")
                          for age in ("LT65", "GE65")])
# role -> (its client's sites, a user of that role at site 101 who signs, their PIN)
ROLES = {
    "site_coordinator": (["101"], "5001", "2468"),
    "investigator": (["101"], "5002", "1357"),
    "pharmacist": (["101"], None, None),
    "project_manager": ([], "5006", "246810"),
    "depot_manager": ([], "7001", "1122"),
    "unblinded_statistician": ([], "5004", "9753"),
}
SITE_ROLES = ("site_coordinator", "investigator", "pharmacist")
SITES = {"own": "101", "other": "102"}
# What may hide an arm: the arms' codes and names, the kit types, the lots.
SECRETS = {"A", "P", "Drug 10 mg", "Placebo", "KA", "KP", "LA1", "LP1"}

# Shorthands for the table: the status a role gets at its own site and at the other.
OK, CREATED = 200, 201
NO = 403           # the role may not, or not at that site (not_allowed, wrong_site)
ALL_OK = {role: (OK, OK) for role in ROLES}


def site_roles(own: int, other: int = NO, *, others: int = NO, roles=SITE_ROLES) -> dict:
    """``roles`` get ``own`` at their site and ``other`` elsewhere; every other role
    ``others`` at both."""
    return {role: ((own, other) if role in roles else (others, others)) for role in ROLES}


# (method, path) -> role -> (status at the own site, status at the other site)
SITE_READERS = {**site_roles(OK, others=OK), "depot_manager": (NO, NO)}
SPONSOR_ONLY = {**site_roles(NO), "project_manager": (OK, OK), "unblinded_statistician": (OK, OK)}
EXPECTED: dict[tuple[str, str], dict[str, tuple[int, int]]] = {
    ("GET", "/study"): ALL_OK,
    ("GET", "/sites"): ALL_OK,
    # Subjects: the site's people at their sites; the sponsor everywhere; not the depot.
    ("GET", "/subjects"): SITE_READERS,
    ("GET", "/subjects/{number}"): SITE_READERS,
    ("GET", "/fhir/ResearchSubject/{number}"): SITE_READERS,
    # Screening, eligibility, randomization, status: coordinator and investigator (§4
    # menu options 1, 2, 6); dispensing also the pharmacist (options 3, 4).
    ("POST", "/subjects"): site_roles(CREATED, roles=("site_coordinator", "investigator")),
    ("POST", "/subjects/{number}/eligibility"):
        site_roles(OK, roles=("site_coordinator", "investigator")),
    ("POST", "/subjects/{number}/randomize"):
        site_roles(OK, roles=("site_coordinator", "investigator")),
    ("POST", "/subjects/{number}/status"):
        site_roles(OK, roles=("site_coordinator", "investigator")),
    ("POST", "/subjects/{number}/dispense"): site_roles(OK),
    # A kit is confirmed by whoever was given it: a kit of another site was not given
    # to this client (409 wrong_kit, as by SMS); the other roles confirm nothing.
    ("POST", "/kits/{number}/confirm"): site_roles(OK, 409),
    # Stock and shipments: everyone who keeps sites supplied, sites their own.
    ("GET", "/inventory"): site_roles(OK, others=OK),
    ("GET", "/shipments"): site_roles(OK, others=OK),
    ("POST", "/shipments/{number}/dispatch"): {**site_roles(NO), "depot_manager": (OK, OK)},
    ("POST", "/shipments/{number}/receive"): site_roles(OK),
    # Approvals: a site sees its own requests (the list has no site to be wrong
    # about); the project manager decides, signed; the depot has none.
    ("GET", "/approvals"): {**site_roles(OK, OK, others=OK), "depot_manager": (NO, NO)},
    ("POST", "/approvals/{number}/decision"): {**site_roles(NO), "project_manager": (OK, OK)},
    ("POST", "/subjects/{number}/unblind"): site_roles(OK, roles=("investigator",)),
    ("GET", "/reports/{name}"): SITE_READERS,
    ("GET", "/audit/verify"): SPONSOR_ONLY,
}


@dataclass
class World:
    """The API, a client per role, and the study's own people to prepare records."""
    api: object
    clients: dict
    monkeypatch: object
    returned: Iterator[int] = field(default_factory=itertools.count)  # kits put in returns

    def prep(self, site: str):
        """The coordinator of a site (a client of the suite's api_support)."""
        return self.api.client("edc-101" if site == "101" else "prep-102")

    def screened(self, site: str, eligible: bool = True) -> str:
        number = self.prep(site).post("/subjects", {"site": site}).json["subject_number"]
        if eligible:
            assert self.prep(site).post(f"/subjects/{number}/eligibility",
                                        {"answers": ELIGIBLE}).status_code == 200
        return number

    def randomized(self, site: str, by=None) -> tuple[str, list[str]]:
        number = self.screened(site)
        answer = (by or self.prep(site)).post(f"/subjects/{number}/randomize",
                                              {"factors": next(STRATA)})
        assert answer.status_code == 200, answer.json
        return number, answer.json["kits"]

    def shipment(self, site: str, dispatched: bool = False) -> str:
        requester = Actor(role="investigator", user_code="5002" if site == "101" else "5005",
                          site_codes=frozenset({site}))
        made = request_shipment(self.api.db, site_code=site, kits_per_type=1, actor=requester)
        number = made.number if hasattr(made, "number") else made.shipment_number
        if dispatched:
            assert self.api.client("depot").post(
                f"/shipments/{number}/dispatch",
                {"carrier": "DHL", "tracking_number": "T1"}).status_code == 200
        return number

    def approval(self, site: str) -> str:
        with self.api.db.sessions() as session:
            kit = session.scalars(select(Kit.kit_number).join(Site, Site.id == Kit.site_id)
                                  .where(Site.code == site, Kit.subject_id.is_(None), Kit.status == "available")
                                  .order_by(Kit.kit_number.desc())
                                  .offset(next(self.returned)).limit(1)).one()
        coordinator = Actor(role="site_coordinator", user_code="5001" if site == "101" else "",
                            site_codes=frozenset({site}))
        declare_return(self.api.db, site_code=site, kit_numbers=[kit],
                       reason="site close-out", actor=coordinator)
        with self.api.db.sessions() as session:  # the return's approval request
            return session.scalars(select(Approval.number).where(
                Approval.kind == "return").order_by(Approval.id.desc()).limit(1)).one()


def signature(role: str) -> dict:
    _, user, pin = ROLES[role]
    return {"user": user or "5003", "pin": pin or "8642"}


# (method, path) -> how a case is made: (world, role, site) -> (path, body)
Case = Callable[[World, str, str], tuple[str, dict | None]]


def _dispense(world: World, role: str, site: str):
    number, _ = world.randomized(site)
    world.monkeypatch.setenv("IVRS_TODAY", (date.today() + timedelta(days=28)).isoformat())
    return f"/subjects/{number}/dispense", {"visit": "V2"}


def _confirm(world: World, role: str, site: str):
    # The kit must be one the confirming client was given: it randomizes when it may.
    randomizes = role in ("site_coordinator", "investigator") and site == "101"
    number, kits = world.randomized(site, by=world.clients[role] if randomizes else None)
    if role == "pharmacist" and site == "101":  # the pharmacist dispenses visit 2 itself
        world.monkeypatch.setenv("IVRS_TODAY", (date.today() + timedelta(days=28)).isoformat())
        kits = world.clients[role].post(f"/subjects/{number}/dispense", {}).json["kits"]
    return f"/kits/{kits[0]}/confirm", {"subject": number}


CASES: dict[tuple[str, str], Case] = {
    ("GET", "/study"): lambda w, r, s: ("/study", None),
    ("GET", "/sites"): lambda w, r, s: ("/sites", None),
    ("GET", "/subjects"): lambda w, r, s: (f"/subjects?site={s}", None),
    ("POST", "/subjects"): lambda w, r, s: ("/subjects", {"site": s}),
    ("GET", "/subjects/{number}"): lambda w, r, s: (f"/subjects/{w.randomized(s)[0]}", None),
    ("GET", "/fhir/ResearchSubject/{number}"):
        lambda w, r, s: (f"/fhir/ResearchSubject/{w.randomized(s)[0]}", None),
    ("POST", "/subjects/{number}/eligibility"):
        lambda w, r, s: (f"/subjects/{w.screened(s, eligible=False)}/eligibility",
                         {"answers": ELIGIBLE}),
    ("POST", "/subjects/{number}/randomize"):
        lambda w, r, s: (f"/subjects/{w.screened(s)}/randomize", {"factors": next(STRATA)}),
    ("POST", "/subjects/{number}/dispense"): _dispense,
    ("POST", "/subjects/{number}/status"):
        lambda w, r, s: (f"/subjects/{w.screened(s)}/status",
                         {"status": "screen_failed", "reason": "consent withdrawn"}),
    ("POST", "/kits/{number}/confirm"): _confirm,
    ("GET", "/inventory"): lambda w, r, s: (f"/inventory?site={s}", None),
    ("GET", "/shipments"): lambda w, r, s: (f"/shipments?site={s}", None),
    ("POST", "/shipments/{number}/dispatch"):
        lambda w, r, s: (f"/shipments/{w.shipment(s)}/dispatch",
                         {"carrier": "DHL", "tracking_number": "T2"}),
    ("POST", "/shipments/{number}/receive"):
        lambda w, r, s: (f"/shipments/{w.shipment(s, dispatched=True)}/receive", {}),
    ("GET", "/approvals"): lambda w, r, s: ("/approvals", None),
    ("POST", "/approvals/{number}/decision"):
        lambda w, r, s: (f"/approvals/{w.approval(s)}/decision",
                         {"decision": "approve", "signature": signature(r)}),
    ("POST", "/subjects/{number}/unblind"):
        lambda w, r, s: (f"/subjects/{w.randomized(s)[0]}/unblind",
                         {"reason": "medical_emergency", "signature": signature(r)}),
    ("GET", "/reports/{name}"): lambda w, r, s: (f"/reports/subjects?site={s}", None),
    ("GET", "/audit/verify"): lambda w, r, s: ("/audit/verify", None),
}


def make_world(db, tmp_path, monkeypatch) -> World:
    api = make_api(db, tmp_path, EDC_ELIGIBILITY)
    # The cases randomize about a hundred subjects: a longer list, more kits.
    write_demo_mrl(tmp_path / "more.csv", per_stratum=90, numbers_after=2000, block_prefix="X")
    import_mrl(db, tmp_path / "more.csv", study_code=STUDY)
    with (tmp_path / "more-kits.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["kit_number", "kit_type", "lot", "expiry_date", "location"])
        numbers = iter(range(700001, 800000))
        for site in ("101", "102", "90"):
            for kit_type, lot in (("KA", "LA1"), ("KP", "LP1")):
                writer.writerows([next(numbers), kit_type, lot, EXPIRY.isoformat(), site]
                                 for _ in range(150))
    import_kits(db, tmp_path / "more-kits.csv", study_code=STUDY)
    assert "prep-102" not in CLIENTS
    api.tokens["prep-102"] = add_client(db, name="prep-102", role="site_coordinator",
                                        sites=["102"], actor=ADMIN).token
    clients = {}
    for role, (sites, _, _) in ROLES.items():
        api.tokens[f"m-{role}"] = add_client(db, name=f"m-{role}", role=role, sites=sites,
                                             actor=ADMIN).token
        clients[role] = api.client(f"m-{role}")
    return World(api, clients, monkeypatch)


@dataclass
class Answer:
    operation: tuple[str, str]
    role: str
    where: str
    status: int
    mimetype: str
    body: bytes


def run_matrix(world: World) -> list[Answer]:
    answers = []
    for key, case in CASES.items():
        for role, client in world.clients.items():
            for where, site in SITES.items():
                world.monkeypatch.delenv("IVRS_TODAY", raising=False)
                path, body = case(world, role, site)
                method, _ = key
                response = (client.get(path) if method == "GET"
                            else client.post(path, body, key=f"{role}-{where}-{path}"))
                answers.append(Answer(key, role, where, response.status_code,
                                      response.mimetype, response.data))
    world.monkeypatch.delenv("IVRS_TODAY", raising=False)
    return answers


def strings(answer: Answer) -> set[str]:
    """Every whole value an answer carries: JSON keys and string values, CSV cells."""
    if answer.mimetype.endswith("json"):
        found: set[str] = set()

        def walk(value) -> None:
            if isinstance(value, dict):
                found.update(value)
                for item in value.values():
                    walk(item)
            elif isinstance(value, list):
                for item in value:
                    walk(item)
            elif isinstance(value, str):
                found.add(value)

        walk(json.loads(answer.body))
        return found
    assert answer.mimetype == "text/csv", answer.mimetype
    return {cell for row in csv.reader(io.StringIO(answer.body.decode("utf-8"))) for cell in row}


def test_the_matrix_covers_every_route():
    served = {(op.method, op.path) for op in OPERATIONS}
    assert set(EXPECTED) == served and set(CASES) == served
    assert all(set(row) == set(ROLES) for row in EXPECTED.values())


def test_every_route_for_every_role_at_its_own_site_and_another(db, tmp_path, monkeypatch):
    world = make_world(db, tmp_path, monkeypatch)
    blinded_sub = add_subscription(db, url="http://127.0.0.1:9/blinded", actor=ADMIN,
                                   event_types=",".join(EVENT_TYPES)).subscription.id
    unblinded_sub = add_subscription(db, url="http://127.0.0.1:9/unblinded", actor=ADMIN,
                                     event_types=",".join(EVENT_TYPES),
                                     role="unblinded_statistician").subscription.id
    answers = run_matrix(world)

    wrong = [(a.operation, a.role, a.where, a.status, a.body[:120]) for a in answers
             if a.status != EXPECTED[a.operation][a.role][0 if a.where == "own" else 1]]
    assert wrong == []
    for answer in answers:
        if answer.status >= 400:  # every refusal is a problem with its stable code
            assert answer.mimetype == "application/problem+json"
            assert json.loads(answer.body)["code"]

    # No blinded answer carries an arm, a kit type or a lot, as a key or a value;
    # the unblinded statistician's do (the scan would see them).
    # (The one answer meant to carry an arm to a blinded role is the investigator's
    # signed emergency unblinding; it must, and nothing else may.)
    unblinding = ("POST", "/subjects/{number}/unblind")
    revealed = [a for a in answers if a.operation == unblinding and a.status == 200]
    assert [(a.role, SECRETS & strings(a) in ({"Drug 10 mg"}, {"Placebo"})) for a in revealed] == [
        ("investigator", True)]
    blinded = [a for a in answers if a.role != "unblinded_statistician" and a not in revealed]
    leaks = [(a.operation, a.role, a.where, SECRETS & strings(a)) for a in blinded
             if SECRETS & strings(a)]
    assert leaks == []
    unblinded = set().union(*(strings(a) for a in answers
                              if a.role == "unblinded_statistician" and a.status == 200))
    assert {"A", "P"} <= unblinded and "arm" in unblinded

    # The same for the events those calls made, as each subscription receives them.
    received = deliveries(db)
    assert len(received[blinded_sub]) == len(received[unblinded_sub]) > 100
    kinds = {body["type"] for body in received[blinded_sub]}
    assert {"subject.screened", "subject.randomized", "kit.dispensed", "kit.confirmed",
            "subject.status_changed", "shipment.dispatched", "shipment.received",
            "unblinding.done"} <= kinds
    leaked = [body for body in received[blinded_sub] if SECRETS & json_strings(body)]
    assert leaked == []
    assert {"A", "P"} <= set().union(*(json_strings(body) for body in received[unblinded_sub]))


def json_strings(body: dict) -> set[str]:
    return strings(Answer(("", ""), "", "", 200, "application/json",
                          json.dumps(body).encode()))


def deliveries(db) -> dict[int, list[dict]]:
    """Every delivery's message, by subscription, as the sender would POST it."""
    now = utcnow()
    while expand_pending(db, now=now):
        pass
    received: dict[int, list[dict]] = {}
    while (claimed := claim_next(db, now=now)) is not None:
        received.setdefault(claimed.subscription_id, []).append(claimed.body)
        record_delivered(db, claimed, 204, now=now)
    return received
