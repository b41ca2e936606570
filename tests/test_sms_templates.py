"""Every SMS text fits its segments, and no notification tells a blinded reader an arm.

SPEC §7: replies fit one segment where possible, never more than three. The
templates are checked at their longest realistic parameters (``LONGEST``), so
the check holds for any study, not only for the short numbers of the example
one. A template using a parameter the table does not know fails: a new text
cannot skip the check.

The blinding test runs the real supply operations that write notifications
(resupply with a short depot, urgent resupply at randomization, dispatch,
receipt with damage, returns, the expiry job, kit confirmation) and renders
every notification as the SMS sender does.
"""

from __future__ import annotations

import re
import string
from datetime import date, timedelta

import pytest
from babel import Locale
from babel.messages.pofile import read_po
from sqlalchemy import select
from studyfiles import DATA, MRL_CSV, signed, write_study

from core.actors import Actor, actor_for_user
from core.gates import decide, expire_stale
from core.clock import utcnow
from core.errors import Refused
from core.models import Arm, Study
from core.mrl import import_mrl
from core.randomize import randomize
from core.study_loader import load_study
from core.subjects import screen_subject
from core.supply.confirmation import MAX_NAMED_KITS
from core.supply.expiry import run_expiry
from core.supply.kit_import import import_kits
from core.models import Kit, KitType, Lot, Notification, Shipment, ShipmentKit
from core.supply.receipt import receive_shipment
from core.supply.resupply import run_resupply
from core.supply.returns import approve_return, declare_return, reject_return
from core.supply.shipments import dispatch_shipment
from core.unblinding import unblind
from dialogs.output import LanguageName, Say, Term
from ivrs.render import speech
from ivrs.render.sms_text import MAX_SEGMENTS, is_gsm7, segments

FAMILIES = ("sms.", "notify.")
KIT_NUMBER = "1" * 20  # kit, subject, shipment, return numbers: String(20) columns
CODE = "X" * 20  # site, depot and visit codes: String(20) columns
# The study file puts no limit on a visit's `dispense`: 4 kits is the most we take
# one visit to hand out (the example study gives 2).
KITS_PER_VISIT = 4


def _catalog():
    with (speech.LOCALES_DIR / speech.SOURCE_LANGUAGE / "LC_MESSAGES" / "messages.po"
          ).open("rb") as handle:
        return read_po(handle)


def _longest_term(prefix: str) -> Term:
    """The catalog term (e.g. a subject status) with the longest English text."""
    terms = {m.id: m.string for m in _catalog() if isinstance(m.id, str)
             and m.id.startswith(prefix)}
    assert terms, f"no {prefix}* terms in the catalog"
    return Term(max(terms, key=lambda term: len(terms[term])))


def _longest_language_name() -> LanguageName:
    english = Locale.parse(speech.SOURCE_LANGUAGE)
    return LanguageName(max(speech.SAY_LANGUAGES, key=lambda code: len(
        Locale.parse(code).get_display_name(english))))


# Parameter name -> its longest realistic value, in the type the dialogs and core pass
# (rendered as the sender renders it: a list joined with ", ", a date as babel's long
# date, a Term as its text, a LanguageName as the language's name).
LONGEST = {
    "subject": KIT_NUMBER, "kit": KIT_NUMBER, "shipment": KIT_NUMBER, "return": KIT_NUMBER,
    "site": CODE, "depot": CODE, "location": CODE, "visit": CODE,
    "confirmation": "9" * 10,  # core.idempotency: a record id, at least 6 digits
    "kits": [KIT_NUMBER] * KITS_PER_VISIT, "expected": [KIT_NUMBER] * KITS_PER_VISIT,
    "awaiting": [KIT_NUMBER] * MAX_NAMED_KITS,  # the pending kits a refusal names
    "visits": [CODE] * KITS_PER_VISIT,  # visits missed at once: 4 as well
    "count": 9999, "received": 9999, "damaged": 9999, "missing": 9999, "quarantined": 9999,
    "available": 9999, "incoming": 9999, "limit": 9999,
    # babel's long date: "September 30, 2030" (September is the longest English month)
    "expiry_date": date(2030, 9, 30), "date": date(2030, 9, 30),
    "start": date(2030, 9, 30), "end": date(2030, 9, 30),
    "status": _longest_term("subject_status."),
    "language": _longest_language_name(),
    "languages": " ".join(speech.SAY_LANGUAGES),  # every language a study may speak
    "carrier": "United Parcel Service",  # free text (String(100)): the longest common name
    "tracking": "9" * 30,  # carriers' tracking numbers run to 10-30 characters
    "reason": "r" * 60,  # a rejection's reason, cut to 60 (core.supply.returns, core.unblinding)
    "number": "9" * 8,  # an approval request's number: 800001, 800002 ... (core.unblinding)
    "user": "9" * 10,  # a user ID: digits typed on a keypad
}
# Free text at its column's size: too long for one segment, never more than three.
COLUMN_MAXIMA = {"carrier": "C" * 100, "tracking": "T" * 100}

# Templates allowed more than one segment, and how many (at most MAX_SEGMENTS).
MULTI_SEGMENT = {
    # Four 20-digit kit numbers are 86 characters; with a 20-character subject and
    # visit the parameters alone take 126 of the 160. Today's 6-digit kit numbers fit one.
    "sms.kit_confirm_request": 2,
    "sms.kit_confirm_reminder": 2,
    "sms.dispensed": 2,
    "sms.wrong_kit": 2,
    # the request's number twice (in the APPROVE/REJECT to text back), subject and site
    "notify.unblinding_requested": 2,
}


def sms_templates() -> dict[str, list[str]]:
    """Message id -> its English texts (two for a plural entry), for the SMS families."""
    found = {}
    for message in _catalog():
        message_id = message.id[0] if isinstance(message.id, tuple) else message.id
        if message_id and message_id.startswith(FAMILIES):
            strings = message.string
            found[message_id] = list(strings) if isinstance(strings, tuple) else [strings]
    return found


TEMPLATES = sms_templates()


def fields(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name}


def renderings(message_id: str, values: dict) -> list[str]:
    """The message at these values, through ivrs.render.speech as the sender does; a plural
    entry once per form (count 1 and the table's count)."""
    used = set().union(*map(fields, TEMPLATES[message_id]))
    params = {name: values[name] for name in used}
    plural = len(TEMPLATES[message_id]) > 1
    counts = (1, values["count"]) if plural else (params.get("count"),)
    texts = []
    for count in counts:
        if count is not None:
            params["count"] = count
        texts.append(speech.text(Say(message_id, dict(params)), speech.SOURCE_LANGUAGE))
    return texts


def test_the_catalog_holds_the_notifications_and_the_kit_confirmation():
    assert {"sms.kit_confirm_request", "notify.shipment_dispatched",
            "notify.expiry_warning.site"} <= set(TEMPLATES)


@pytest.mark.parametrize("message_id", sorted(TEMPLATES))
def test_every_parameter_has_a_longest_value(message_id):
    unknown = set().union(*map(fields, TEMPLATES[message_id])) - set(LONGEST)
    assert not unknown, (f"{message_id} uses {sorted(unknown)}: add their longest realistic "
                         "values to LONGEST in tests/test_sms_templates.py")


@pytest.mark.parametrize("message_id", sorted(TEMPLATES))
def test_english_texts_are_gsm7(message_id):
    for text in TEMPLATES[message_id]:
        assert is_gsm7(text), f"{message_id}: {[c for c in text if not is_gsm7(c)]}"


@pytest.mark.parametrize("message_id", sorted(TEMPLATES))
def test_every_text_fits_its_segments_at_its_longest(message_id):
    allowed = MULTI_SEGMENT.get(message_id, 1)
    assert allowed <= MAX_SEGMENTS
    for text in renderings(message_id, LONGEST):
        assert text, f"{message_id} does not render with its parameters"
        assert "{" not in text and "[" not in text, text  # every placeholder filled, lists joined
        assert segments(text).count <= allowed, (
            f"{message_id}: {segments(text).count} segments ({len(text)} characters), "
            f"{allowed} allowed: {text}")


@pytest.mark.parametrize("message_id", sorted(TEMPLATES))
def test_free_text_at_its_column_size_stays_within_three_segments(message_id):
    for text in renderings(message_id, {**LONGEST, **COLUMN_MAXIMA}):
        assert text and segments(text).count <= MAX_SEGMENTS, (message_id, len(text))


@pytest.mark.parametrize("message_id", sorted(MULTI_SEGMENT))
def test_the_multi_segment_allowances_are_needed(message_id):
    assert message_id in TEMPLATES, f"{message_id} is no longer in the catalog"
    longest = max(segments(text).count for text in renderings(message_id, LONGEST))
    assert longest == MULTI_SEGMENT[message_id], (message_id, longest)


def test_a_list_renders_joined_and_a_date_as_a_long_date():
    [text] = renderings("sms.kit_confirm_request",
                        {**LONGEST, "kits": ["100234", "100235"], "subject": "1010001",
                         "visit": "V2"})
    assert "100234, 100235" in text
    texts = renderings("notify.expiry_warning.site", {**LONGEST, "count": 3})
    assert "September 30, 2030" in texts[1] and " 3 kits " in texts[1]
    assert " 1 kit " in texts[0]


# --- blinding: every notification the supply operations write --------------------------------

TODAY = date(2026, 1, 15)
YES = {"INC1": True, "INC2": True, "EXC1": True}
M_LT65 = {"SEX": "M", "AGE": "LT65"}
# Site 103 wants far more KA kits than the depot holds: its shipments fall short.
SHORT_SITE_103 = ('timezone: Europe/Berlin, depot: "90"}',
                  'timezone: Europe/Berlin, depot: "90", resupply: {KA: {trigger: 4, target: 30}}}')
APPROVAL_MODE = ("unblinding: {mode: investigator}", "unblinding: {mode: approval}")


def user(db, code: str) -> Actor:
    with db.sessions() as session:
        return actor_for_user(session, session.scalars(select(Study.id)).one(), code, "test")


def enrol(db, site: str, code: str):
    subject = screen_subject(db, site_code=site, actor=user(db, code)).subject_number
    return randomize(db, subject_number=subject, actor=user(db, code), eligibility=YES,
                     factors=M_LT65)


def shipment_of(db, site: str) -> str:
    from core.models import Site
    with db.sessions() as session:
        return session.scalars(select(Shipment.shipment_number).join(
            Site, Site.id == Shipment.site_id).where(Site.code == site)
            .order_by(Shipment.id)).first()


def kits_in(db, shipment: str) -> list[str]:
    with db.sessions() as session:
        return list(session.scalars(
            select(Kit.kit_number).join(ShipmentKit, ShipmentKit.kit_id == Kit.id)
            .join(Shipment, Shipment.id == ShipmentKit.shipment_id)
            .where(Shipment.shipment_number == shipment).order_by(Kit.kit_number)))


def available_at(db, site: str) -> list[str]:
    from core.models import Site
    with db.sessions() as session:
        return list(session.scalars(
            select(Kit.kit_number).join(Site, Site.id == Kit.site_id)
            .where(Site.code == site, Kit.status == "available").order_by(Kit.kit_number)))


def secrets(db) -> tuple[list[str], list[str]]:
    """(codes matched as whole words, names matched anywhere): what the blind hides."""
    with db.sessions() as session:
        codes = [*session.scalars(select(Arm.code)), *session.scalars(select(KitType.code)),
                 *session.scalars(select(Lot.code))]
        names = list(session.scalars(select(Arm.name)))
    return codes, names


def revealed(text: str, codes: list[str], names: list[str]) -> list[str]:
    found = [c for c in codes
             if re.search(rf"(?<![A-Za-z0-9]){re.escape(c)}(?![A-Za-z0-9])", text)]
    return found + [n for n in names if n.lower() in text.lower()]


@pytest.fixture
def supplied(db, tmp_path, monkeypatch):
    """The example study after every operation that notifies someone."""
    monkeypatch.setenv("IVRS_TODAY", TODAY.isoformat())
    load_study(db, write_study(tmp_path, SHORT_SITE_103, APPROVAL_MODE))
    import_mrl(db, MRL_CSV)
    import_kits(db, DATA / "kits.csv")  # depot 90: 20 KA, 20 KP; site 101: 2 of each
    # Randomization at sites without kits: an urgent shipment for 102, a short depot for 103.
    for site, code in (("102", "5005"), ("103", "5005")):
        with pytest.raises(Refused, match="lacks dispensable kits"):
            enrol(db, site, code)
    # The next day's supply run: 101 is resupplied, 103 still falls short (a new day's notice).
    monkeypatch.setenv("IVRS_TODAY", (TODAY + timedelta(days=1)).isoformat())
    assert [s.site for s in run_resupply(db, today=TODAY + timedelta(days=1))] == ["101"]
    number = shipment_of(db, "101")
    dispatch_shipment(db, shipment_number=number, carrier="DHL", tracking_number="JD0001",
                      actor=user(db, "7001"))
    damaged, missing, *_ = kits_in(db, number)
    receive_shipment(db, shipment_number=number, actor=user(db, "5001"), damaged=[damaged],
                     missing=[missing])
    enrolled = enrol(db, "101", "5001")
    assert enrolled.kits  # the kit-number confirmation request
    first, second, third, fourth, *_ = available_at(db, "101")
    approved = declare_return(db, site_code="101", kit_numbers=[first, second],
                              reason="site close-out", actor=user(db, "5001")).return_number
    approve_return(db, return_number=approved, actor=user(db, "5006"), signature=signed(db, "5006"))
    rejected = declare_return(db, site_code="101", kit_numbers=[third], reason="r",
                              actor=user(db, "5001")).return_number
    reject_return(db, return_number=rejected, reason="still in date: keep using it",
                  actor=user(db, "5006"), signature=signed(db, "5006"))
    # Emergency unblinding in mode approval: requested, approved, revealed; rejected;
    # and a request nobody decides expires, with a return nobody decides.
    investigator = user(db, "5002")

    def request_unblinding() -> str:
        return unblind(db, subject_number=enrolled.subject_number, reason="other",
                       signature=signed(db, "5002"), actor=investigator).number

    unblinding = request_unblinding()
    decide(db, number=unblinding, approve=True, actor=user(db, "5006"),
           signature=signed(db, "5006"))
    request_unblinding()  # the approved request: revealed to the requester
    decide(db, number=request_unblinding(), approve=False, reason="not an emergency",
           actor=user(db, "5006"), signature=signed(db, "5006"))
    request_unblinding()
    declare_return(db, site_code="101", kit_numbers=[fourth], reason="r",
                   actor=user(db, "5001"))
    assert len(expire_stale(db, now=utcnow() + timedelta(days=30))) == 2
    # Four years on, the first lots (June 2030) are about to expire at the depot and at 101.
    assert run_expiry(db, today=date(2030, 6, 15)).warnings >= 2
    return db


def test_every_notification_renders_and_reveals_no_arm_kit_type_or_lot(supplied):
    codes, names = secrets(supplied)
    assert {"A", "P", "KA", "KP", "LA1", "LP2"} <= set(codes) and names
    with supplied.sessions() as session:
        notes = list(session.scalars(select(Notification).order_by(Notification.id)))
    rendered = set()
    for note in notes:
        assert note.message_id.startswith(FAMILIES), (note.kind, note.message_id)
        assert not {"arm", "kit_type", "lot"} & set(note.params), (note.kind, note.params)
        text = speech.text(Say(note.message_id, dict(note.params)), speech.SOURCE_LANGUAGE)
        assert text, f"{note.kind}: {note.message_id} renders nothing with {note.params}"
        assert not revealed(text, codes, names), (note.kind, text)
        assert not revealed(repr(note.params), codes, names), (note.kind, note.params)
        assert segments(text).count == 1, text
        rendered.add(note.message_id)
    # Every notification text in the catalog was written by some operation above, so a
    # new one cannot escape this test.
    assert {m for m in TEMPLATES if m.startswith("notify.")} <= rendered, sorted(
        {m for m in TEMPLATES if m.startswith("notify.")} - rendered)
    assert "sms.kit_confirm_request" in rendered


def test_the_notifications_say_what_happened(supplied):
    with supplied.sessions() as session:
        notes = {note.message_id: note for note in session.scalars(select(Notification))}
    dispatched = notes["notify.shipment_dispatched"]
    text = speech.text(Say(dispatched.message_id, dict(dispatched.params)), "en")
    assert text == (f"Shipment {dispatched.params['shipment']} is on its way: "
                    f"{dispatched.params['count']} kits, DHL JD0001. Confirm receipt on "
                    "arrival: call or text RECV.")
    rejected = notes["notify.return_rejected"]
    assert speech.text(Say(rejected.message_id, dict(rejected.params)), "en").endswith(
        "kit at your site. Reason: still in date: keep using it")
    assert notes["notify.depot_short.urgent"].params["reason"] == "urgent"
    assert notes["notify.depot_short"].params["site"] == "103"


# --- every shipped language ----------------------------------------------------------------


LANGUAGES = [lang for lang in speech.available_languages() if lang != speech.SOURCE_LANGUAGE]


@pytest.mark.parametrize("language", LANGUAGES)
def test_every_text_in_every_language_fits_three_segments_at_its_longest(language):
    """As the sender sends it (``for_sms``): Latin-script languages in GSM-7 where
    their accents allow, Japanese and Chinese in UCS-2 (70 characters a segment)."""
    from ivrs.render.sms_text import for_sms

    too_long = []
    for message_id in sorted(TEMPLATES):
        used = set().union(*map(fields, TEMPLATES[message_id]))
        params = {name: LONGEST[name] for name in used}
        for count in ((1, LONGEST["count"]) if len(TEMPLATES[message_id]) > 1 else (None,)):
            if count is not None:
                params["count"] = count
            text = for_sms(speech.text(Say(message_id, dict(params)), language))
            assert text and "{" not in text, (language, message_id, text)
            if segments(text).count > MAX_SEGMENTS:
                too_long.append((message_id, segments(text).count, text))
    assert not too_long, too_long
