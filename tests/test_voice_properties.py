"""Property: whatever a caller keys, the voice webhook answers well-formed TwiML
and touches the database only when something was confirmed or a PIN was checked.

A hypothesis state machine plays several calls at once against the demo study
(in-process Flask app, signed requests): dialling from registered and
unregistered numbers, random keys (digits, ``*``, ``#``, ``*#``, long
strings, silence), replays of the last request (Twilio's retry), hang-ups,
and, so that the calls get somewhere, correct or wrong sign-ins, menu choices,
confirmations and whole flows typed with numbers the study really has.

Checked after every request:

1. HTTP 200 and TwiML of the shape Twilio needs (``assert_twiml``); no apology
   (an apology is an exception the webhook swallowed) and no error logged.
2. A replay gets byte-identical TwiML and changes nothing.
3. The database (every table's full content, not only its row count) changes
   only in the steps listed in ``why_it_may_change``; and a step that says it
   recorded something did change it, with a confirmation number never heard
   before (only menu option 9 repeats one).
4. Nothing said, and nothing logged, names an arm; no PIN typed is logged.

One harness (database, app, session store) serves all examples of the test:
fresh databases per example cost ~0.4 s each on SQLite and far more on
PostgreSQL. Each example starts by restoring the users' sign-in state
(PINs, lockout), so that wrong PINs of one example do not lock out the next;
subjects, kits and shipments accumulate, which only widens what later
examples reach.
"""

from __future__ import annotations

import logging
import os
import re
import urllib.parse
import xml.etree.ElementTree as ET
from typing import ClassVar

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, precondition, rule, run_state_machine_as_test
from sqlalchemy import select, update
from twilio.request_validator import RequestValidator
from voice import BARCELONA, DEPOT, PARIS, TOKEN, UNKNOWN

from core.actors import ADMIN, Actor
from core.models import Base, Site, Subject, User
from core.randomize import randomize
from core.subjects import screen_subject
from core.models import Kit, Shipment
from core.supply.resupply import run_resupply
from core.supply.shipments import dispatch_shipment
from core.users import add_user
from ivrs.demo.scenario import days_later
from ivrs.render.speech import SAY_LANGUAGES

STUDY = "DEMO-301"
BERLIN = "+4915112345678"
LONDON = "+447700900123"
PHARMACY = "+33600000001"
SITE_OF = {"5001": "101", "5002": "102", "5003": "103", "6001": "101"}  # site users' sites
# (user ID, PIN) of every user the state machine may sign in as; 6001's PIN is temporary.
USERS = [("5001", "2468"), ("5002", "1357"), ("5003", "8642"), ("7001", "1122"),
         ("5004", "9753"), ("6001", "1111")]
CALLERS = [PARIS, BARCELONA, BERLIN, DEPOT, LONDON, PHARMACY, UNKNOWN]

ARM_WORDS = ("Drug X", "Placebo", "KA", "KP", " arm")
APOLOGY = "cannot take your call"  # ivrs.render.twiml.apology: the webhook hid an exception
GATHER_ACTION = re.compile(r"^voice\?step=(\d+)$")
CONFIRMATION = re.compile(r"Confirmation number ((?:\d ?)+)")

# Prompts (English catalog) that tell what the keys answered.
USER_ID_PROMPT = "Enter your user ID"
PIN_PROMPT = "Enter your PIN"
NEW_PIN_AGAIN_PROMPT = "Enter the new PIN again"
ELIGIBILITY_PROMPT = "Press 1 for yes, 2 for no"
RANDOMIZE_PROMPT = "To randomize, press 1"
LANGUAGE_MENU = "For English, press"
# What sign_in (core/login.py) may write: the user row (failed attempts, lock,
# a rehashed PIN) and its audit record, sealed under an idempotency record.
APPEND_ONLY = "audit_events"
SIGN_IN_TABLES = {"users", "audit_events", "audit_heads", "idempotency_records"}

# --- keys ------------------------------------------------------------------------------------

single_keys = st.sampled_from(list("0123456789*#") + ["*#"])
numbers = st.text("0123456789", min_size=1, max_size=9).map(lambda digits: digits + "#")
long_entries = st.text("0123456789*#", min_size=10, max_size=80)
random_keys = st.one_of(st.none(), single_keys, numbers, long_entries)
# What no keypad sends: other scripts' digits, controls, markup, emoji, long text.
HOSTILE_ALPHABET = st.characters(codec="utf-8", exclude_characters="\r")
hostile_keys = st.text(HOSTILE_ALPHABET, min_size=1, max_size=300).filter(
    lambda keys: not set(keys) <= set("0123456789*#"))
NOT_UNDERSTOOD = "this request could not be understood"


def typed(keys: str | None) -> str:
    """The entry as the dialog sees it (Phone.press drops one final #)."""
    if keys is None:
        return ""
    return keys.removesuffix("#")


# --- invariant 1: the TwiML --------------------------------------------------------------------

def assert_twiml(status: int, body: str) -> int | None:
    """The answer Twilio needs; returns the Gather's step (None: the call hangs up)."""
    assert status == 200, (status, body)
    assert "Traceback" not in body and "Exception" not in body, body
    root = ET.fromstring(body)
    assert root.tag == "Response", body
    gathers, hangups = root.findall("Gather"), root.findall("Hangup")
    assert len(gathers) + len(hangups) == 1, f"neither one Gather nor one Hangup: {body}"
    assert len(list(root.iter("Gather"))) == len(gathers), body
    says = list(root.iter("Say"))
    assert says, f"the caller hears nothing: {body}"
    for say in says:
        assert say.get("language") in SAY_LANGUAGES.values(), body
        assert (say.text or "").strip(), f"an empty <Say>: {body}"
    assert APOLOGY not in body, f"the webhook apologised (an exception): {body}"
    for word in ARM_WORDS:
        assert word not in body, f"{word!r} said: {body}"
    if hangups:
        assert list(root)[-1].tag == "Hangup", body
        return None
    gather = gathers[0]
    assert list(root)[-1] is gather, body
    assert gather.get("input") == "dtmf", body
    assert gather.get("actionOnEmptyResult") == "true", body
    keyed = (gather.get("numDigits"), gather.get("finishOnKey"))
    assert keyed in (("1", None), (None, "#")), body
    action = GATHER_ACTION.match(gather.get("action") or "")
    assert action, body
    return int(action.group(1))


# --- invariant 3: when the database may change -------------------------------------------------

def why_it_may_change(prompt: str, keys: str | None, heard: str,
                      new_confirmation: bool) -> tuple[str, set[str] | None] | None:
    """The reason a request may change the database, with the tables it may
    touch (None: any), or None when it must change nothing.

    Derived from dialogs/voice/*.py: every core call that commits is either a
    confirmed transaction (its confirmation number is spoken), one of the two
    refusals that are recorded on purpose (not eligible; no stock at the site,
    which also requests an urgent shipment), or the PIN check of sign-in.
    """
    entry = typed(keys)
    if new_confirmation and (entry == "1" or (NEW_PIN_AGAIN_PROMPT in prompt
                                              and entry.isdigit())):
        # "1" confirms; a change of PIN is confirmed by typing it again.
        return "confirmed transaction", None
    if "is not eligible. This is recorded" in heard and ELIGIBILITY_PROMPT in prompt \
            and entry == "2":
        return "recorded refusal: not eligible", None
    if "urgent shipment is requested" in heard and RANDOMIZE_PROMPT in prompt and entry == "1":
        return "recorded refusal: no stock at the site", None
    if PIN_PROMPT in prompt and entry.isdigit() and len(entry) <= 20:
        return "PIN checked", SIGN_IN_TABLES
    return None


def must_change(heard: str, new_confirmation: bool) -> bool:
    """What the caller was told was recorded must be in the database."""
    return new_confirmation or "This is recorded" in heard \
        or "urgent shipment is requested" in heard


def database_content(db) -> dict[str, str]:
    """Every table, every row, in primary-key order (updates count, not only inserts).

    The audit trail is append-only (triggers, core/append_only.py) and by far the
    largest table: its row count and last id say all that can change there. Plain
    DBAPI queries: this runs after every request, ORM overhead would dominate.
    """
    connection = db.engine.raw_connection()
    try:
        cursor = connection.cursor()
        content = {}
        for name, query in _CONTENT_QUERIES.items():
            cursor.execute(query)
            content[name] = repr(cursor.fetchall())
        connection.rollback()
        return content
    finally:
        connection.close()


def _content_query(name: str, table) -> str:
    if name == APPEND_ONLY:
        return f'SELECT count(*), max(id) FROM "{name}"'
    order = ", ".join(f'"{column.name}"' for column in table.primary_key.columns)
    return f'SELECT * FROM "{name}" ORDER BY {order}'


_CONTENT_QUERIES = {name: _content_query(name, table)
                    for name, table in Base.metadata.tables.items()}


def changed_tables(before: dict[str, str], after: dict[str, str]) -> set[str]:
    return {name for name in after if before.get(name) != after[name]}


# --- the study the calls meet ------------------------------------------------------------------

def prepare_study(voice) -> None:
    """Subjects in every state a flow can start from, a shipment on its way to site
    103, and a user whose PIN is temporary: the flows have something to find."""
    paris = Actor(role="site_coordinator", user_code="5001", site_codes=frozenset({"101"}),
                  channel="test")
    yes = {"INC1": True, "INC2": True, "EXC1": True}
    with days_later(-28):  # randomized four weeks ago: visit 2 is due today
        for site, factors in (("101", {"SEX": "F", "AGE": "LT65"}),
                              ("102", {"SEX": "M", "AGE": "GE65"})):
            subject = screen_subject(voice.db, site_code=site, actor=ADMIN, study=STUDY)
            randomize(voice.db, subject_number=subject.subject_number, actor=ADMIN,
                      study=STUDY, eligibility=yes, factors=factors)
    for site in ("101", "101", "102", "103"):
        screen_subject(voice.db, site_code=site, actor=paris if site == "101" else ADMIN,
                       study=STUDY)
    for shipment in run_resupply(voice.db, study=STUDY):
        if shipment.site == "103":
            dispatch_shipment(voice.db, shipment_number=shipment.shipment_number,
                              carrier="DHL", tracking_number="T1", actor=ADMIN, study=STUDY)
    add_user(voice.db, user_code="6001", name="Nurse", role="pharmacist", sites=["101"],
             phone=PHARMACY, language="en", pin="1111", actor=ADMIN, study=STUDY)


def known_numbers(db) -> dict[str, list]:
    """Numbers worth typing: subjects (with their site and kits) and shipments (with
    their site)."""
    with db.sessions() as session:
        subjects = session.execute(select(Subject.id, Subject.subject_number, Site.code,
                                          Subject.status)
                                   .join(Site, Site.id == Subject.site_id)
                                   .order_by(Subject.subject_number)).all()
        kits = session.execute(select(Kit.subject_id, Kit.kit_number).where(
            Kit.subject_id.is_not(None)).order_by(Kit.kit_number)).all()
        shipments = session.execute(select(Shipment.shipment_number, Site.code)
                                    .join(Site, Site.id == Shipment.site_id)
                                    .order_by(Shipment.shipment_number)).all()
    return {
        "subjects": [(number, site, status, [kit for owner, kit in kits if owner == subject_id])
                     for subject_id, number, site, status in subjects],
        "shipments": [tuple(row) for row in shipments],
    }


def sign_in_state(db) -> list[dict]:
    with db.sessions() as session:
        return [{"id": user.id, "pin_hash": user.pin_hash, "pin_temporary": user.pin_temporary,
                 "failed_attempts": user.failed_attempts, "locked": user.locked}
                for user in session.execute(select(User)).scalars()]


def restore_sign_in_state(db, users: list[dict]) -> None:
    with db.transaction() as session:
        for user in users:
            session.execute(update(User).where(User.id == user["id"]).values(
                **{k: v for k, v in user.items() if k != "id"}))


# --- the state machine -------------------------------------------------------------------------

class Call:
    def __init__(self, phone) -> None:
        self.phone = phone
        self.step: int | None = None  # the step the last Gather asked for
        self.user: str | None = None  # who signed in on this call
        self.over = False  # Twilio said "completed": no more requests

    @property
    def waiting(self) -> bool:
        return not self.over and self.phone.last is not None and not self.phone.last.ended

    @property
    def at_sign_in(self) -> bool:
        return self.waiting and (USER_ID_PROMPT in self.phone.last.text
                                 or LANGUAGE_MENU in self.phone.last.text)

    @property
    def signed_in(self) -> bool:
        return self.waiting and self.user is not None


class VoiceCalls(RuleBasedStateMachine):
    """Several calls at once; every request goes through ``request``."""

    voice = None  # the harness, set per test (see test_voice_webhook_properties)
    log = None  # pytest's caplog
    users: ClassVar[list[dict]] = []  # the users' sign-in state when the test began
    heard_confirmations: ClassVar[set[str]] = set()  # per test: they are record ids

    def __init__(self) -> None:
        super().__init__()
        restore_sign_in_state(self.voice.db, self.users)
        self.content = database_content(self.voice.db)
        self.pins = dict(USERS)
        self.calls: list[Call] = []
        self.current: Call | None = None

    # --- one request, all invariants ---------------------------------------------------------

    def request(self, call: Call, keys: str | None, dial: bool = False):
        prompt = "" if dial else call.phone.last.text
        logged = len(self.log.records)
        heard = call.phone.dial() if dial else call.phone.press(keys)
        step = assert_twiml(heard.status, heard.xml)
        expected = 1 if dial else call.step + 1
        assert step in (None, expected), f"step {step} after step {call.step}"
        call.step = step
        self.check_logs(logged, prompt, keys)
        confirmations = {c.replace(" ", "") for c in CONFIRMATION.findall(heard.text)}
        new_confirmation = bool(confirmations - self.heard_confirmations)
        repeating = typed(keys) == "9"  # menu option 9 repeats the call's last result
        if not repeating:
            assert not confirmations & self.heard_confirmations, \
                f"an old confirmation number for a new step: keys {keys!r} -> {heard.text!r}"
        self.heard_confirmations.update(confirmations)
        content = database_content(self.voice.db)
        changed = changed_tables(self.content, content)
        self.content = content
        context = f"keys {keys!r} after {prompt!r} -> {heard.text!r}"
        if changed:
            reason = why_it_may_change(prompt, keys, heard.text, new_confirmation)
            assert reason is not None, f"database changed ({sorted(changed)}) on {context}"
            allowed = reason[1]
            assert allowed is None or changed <= allowed, \
                f"{reason[0]} changed {sorted(changed - allowed)} on {context}"
        elif not repeating and must_change(heard.text, new_confirmation):
            raise AssertionError(f"said recorded, nothing in the database: {context}")
        return heard

    def check_logs(self, first: int, prompt: str, keys: str | None) -> None:
        entry = typed(keys)
        secret = entry if "PIN" in prompt and len(entry) >= 4 else None
        for record in self.log.records[first:]:
            message = record.getMessage()
            assert record.levelno < logging.ERROR, f"logged an error: {message}"
            for word in ARM_WORDS:
                assert word not in message, f"{word!r} logged: {message}"
            if secret:
                for call in self.calls:  # a call SID is hex: it may hold any 4 digits
                    message = message.replace(call.phone.call_sid, "")
                assert secret not in message, f"typed PIN logged: {message}"

    def press(self, keys: str | None):
        return self.request(self.current, keys)

    # --- requests no Twilio sends (issue 25): not understood, nothing changes -----------------

    forgeries: ClassVar[list[str]] = []  # per test, for the count it prints

    def forged(self, path: str, form: dict[str, str]) -> None:
        """A signed request off the call's path: the answer says it was not
        understood, the database and the call stay as they were (the phone does
        not remember the request, so its next genuine key continues the call)."""
        self.forgeries.append(path)
        status, body = self.current.phone._send(path, form)
        assert status == 200, (status, body)
        root = ET.fromstring(body)
        assert [child.tag for child in root] == ["Say", "Hangup"], body
        assert NOT_UNDERSTOOD in root[0].text, body
        assert database_content(self.voice.db) == self.content, f"{path} {form!r} changed data"

    @precondition(lambda self: self.current is not None and self.current.waiting)
    @rule(keys=hostile_keys)
    def press_hostile(self, keys):
        self.forged("/" + self.current.phone.last.action, {"Digits": keys})

    @precondition(lambda self: self.current is not None and self.current.waiting)
    @rule(forgery=st.sampled_from(["+{}", "0{}", " {}", "{}\n", "{}_0", "arabic", "full-width",
                                   "devanagari"]),
          key=st.sampled_from(list("123456789")))
    def forge_step(self, forgery, key):
        step = GATHER_ACTION.match(self.current.phone.last.action).group(1)
        bases = {"arabic": 0x0660, "full-width": 0xFF10, "devanagari": 0x0966}
        token = ("".join(chr(bases[forgery] + int(d)) for d in step) if forgery in bases
                 else forgery.format(step))
        self.forged(f"/voice?step={urllib.parse.quote(token)}", {"Digits": key})

    # --- calls ---------------------------------------------------------------------------------

    @rule(caller=st.sampled_from(CALLERS), then_sign_in=st.sampled_from([True, True, False]),
          user=st.sampled_from(USERS), right_pin=st.sampled_from([True, True, True, False]))
    def dial(self, caller, then_sign_in, user, right_pin):
        """A new call (the previous one stays open: calls interleave), most often
        signed in at once, so that the other rules find a menu."""
        call = Call(self.voice.phone(caller))
        self.calls.append(call)
        self.current = call
        self.request(call, None, dial=True)
        if then_sign_in:
            self.type_credentials(user, right_pin, "1")

    @precondition(lambda self: len(self.calls) > 1)
    @rule(index=st.integers(min_value=0, max_value=20))
    def switch_call(self, index):
        self.current = self.calls[index % len(self.calls)]

    @precondition(lambda self: self.current is not None and not self.current.over)
    @rule()
    def replay(self):
        """Twilio's retry of the last request: the same answer, nothing done again."""
        phone = self.current.phone
        before = phone.last
        logged = len(self.log.records)
        heard = phone.repeat_last_request()
        assert_twiml(heard.status, heard.xml)
        assert heard.xml == before.xml, f"replay answered {heard.xml!r}, not {before.xml!r}"
        self.check_logs(logged, "", None)
        content = database_content(self.voice.db)
        changed = changed_tables(self.content, content)
        assert not changed, f"replay changed {sorted(changed)}"

    @precondition(lambda self: self.current is not None and not self.current.over)
    @rule()
    def hang_up(self):
        """Twilio's status callback: the call is over; nothing recorded."""
        phone = self.current.phone
        form = {"CallSid": phone.call_sid, "CallStatus": "completed", "From": phone.caller,
                "To": phone.dialed}
        url = phone.public_base_url + "/voice/status"
        signature = RequestValidator(TOKEN).compute_signature(url, form)
        status, _ = phone.transport.post("/voice/status", form, {"X-Twilio-Signature": signature})
        assert status == 204
        assert database_content(self.voice.db) == self.content
        self.current.over = True

    # --- keys ----------------------------------------------------------------------------------

    @precondition(lambda self: self.current is not None and self.current.waiting)
    @rule(keys=random_keys)
    def press_random(self, keys):
        self.press(keys)

    @precondition(lambda self: self.current is not None and self.current.waiting)
    @rule(key=st.sampled_from(["1", "1", "1", "2", "3"]))
    def confirm(self, key):
        self.press(key)

    @precondition(lambda self: self.current is not None and self.current.waiting)
    @rule(option=st.sampled_from("123456789"))
    def menu(self, option):
        self.press(option)

    @precondition(lambda self: self.current is not None and self.current.waiting)
    @rule(kind=st.sampled_from(["subject", "subject", "kit", "shipment", "site"]),
          index=st.integers(min_value=0, max_value=50), own_site=st.booleans())
    def type_known_number(self, kind, index, own_site):
        subject, kit, shipment = self.pick(index, own_site)
        site = SITE_OF.get(self.current.user or "", "101") if own_site else "102"
        self.press({"subject": subject, "kit": kit, "shipment": shipment, "site": site}[kind]
                   + "#")

    def pick(self, index: int, own_site: bool, status: str | None = None
             ) -> tuple[str, str, str]:
        """A subject (in ``status``, if given and there is one), one of its kits and a
        shipment: of the signed-in user's site when ``own_site`` (else of any site),
        as the database has them now."""
        known = known_numbers(self.voice.db)
        site = SITE_OF.get(self.current.user or "") if own_site else None
        subjects = [s for s in known["subjects"] if site in (None, s[1])] or known["subjects"]
        subjects = [s for s in subjects if status in (None, s[2])] or subjects
        subject, _, _, kits = subjects[index % len(subjects)]
        shipments = [s for s, at in known["shipments"] if site in (None, at)] \
            or [s for s, _ in known["shipments"]] or ["1"]
        return subject, (kits or ["999999"])[index % max(len(kits), 1)], \
            shipments[-1 - index % len(shipments)]

    @precondition(lambda self: self.current is not None and self.current.at_sign_in)
    @rule(user=st.sampled_from(USERS), right_pin=st.sampled_from([True, True, True, False]),
          # English: the checks read English prompts (tests/test_languages.py
          # covers the other languages).
          language=st.just("1"))
    def sign_in(self, user, right_pin, language):
        self.type_credentials(user, right_pin, language)

    def type_credentials(self, user: tuple[str, str], right_pin: bool, language: str) -> None:
        user_code, _ = user
        if LANGUAGE_MENU in self.current.phone.last.text:
            self.press(language)
        for keys in (user_code + "#", (self.pins[user_code] if right_pin else "0000") + "#"):
            if not self.current.waiting:
                return
            heard = self.press(keys)
        if "To change your PIN, 8" in heard.text or "PIN is temporary" in heard.text:
            self.current.user = user_code
        if "PIN is temporary" in heard.text:
            self.change_pin(user_code, "4321")

    def change_pin(self, user_code: str, new_pin: str) -> None:
        for _ in range(2):
            if not self.current.waiting:
                return
            heard = self.press(new_pin + "#")
        if "PIN is changed" in heard.text:
            self.pins[user_code] = new_pin

    @precondition(lambda self: self.current is not None and self.current.signed_in)
    @rule(flow=st.sampled_from(["screen", "randomize", "dispense", "replace", "receive",
                                "status", "repeat", "pin"]),
          index=st.integers(min_value=0, max_value=50),
          answers=st.lists(st.sampled_from("12"), min_size=3, max_size=3),
          eligible=st.sampled_from([True, True, True, False]),
          new_pin=st.sampled_from(["4321", "24680", "2468", "12"]),
          own_site=st.sampled_from([True, True, True, False]),
          confirm=st.sampled_from(["1", "1", "2"]))
    def flow(self, flow, index, answers, eligible, new_pin, own_site, confirm):
        """A menu option typed through to its confirmation (from wherever the call is)."""
        wanted = {"randomize": "screened", "dispense": "randomized", "replace": "randomized"}
        subject, kit, shipment = self.pick(index, own_site, wanted.get(flow))
        eligibility = ["1", "1", "1"] if eligible else ["1"] * (index % 3) + ["2"]
        keys = {
            "screen": ["1", confirm],
            "randomize": ["2", subject + "#", "1", *eligibility, answers[0], answers[1], confirm],
            "dispense": ["3", subject + "#", "1", confirm],
            "replace": ["4", subject + "#", "1", kit + "#", "1", answers[2], confirm],
            "receive": ["5", shipment + "#", "1", answers[2], "#", confirm],
            "status": ["6", subject + "#", "1", answers[0], confirm],
            "repeat": ["9"],
            "pin": ["8"],
        }[flow]
        for key in ["*", *keys]:
            if not self.current.waiting:
                return
            self.press(key)
        if flow == "pin" and self.current.user:
            self.change_pin(self.current.user, new_pin)


def test_voice_webhook_properties(voice, caplog):
    """Random keys on random calls: valid TwiML, replays repeat, the database
    changes only where the dialog confirmed something or checked a PIN."""
    caplog.set_level(logging.INFO)
    prepare_study(voice)
    forgeries: list[str] = []
    machine = type("DemoStudyCalls", (VoiceCalls,), {
        "voice": voice, "log": caplog, "users": sign_in_state(voice.db),
        "heard_confirmations": set(), "forgeries": forgeries})
    default = 12 if os.environ.get("IVRS_TEST_DATABASE_URL") else 40
    examples = int(os.environ.get("IVRS_FUZZ_EXAMPLES", default))
    run_state_machine_as_test(machine, settings=settings(
        max_examples=examples, stateful_step_count=30, deadline=None,
        # CI replays the same sequences every run (a red build must be
        # reproducible); a developer's run explores new ones.
        derandomize=bool(os.environ.get("CI")),
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]))
    print(f"voice state machine: {examples} examples, {len(forgeries)} forged requests")


def test_the_change_rule_is_tight():
    """The list of allowed changes: a digit pressed anywhere else, a PIN typed
    at another prompt, or a repeated confirmation allows nothing."""
    menu = "To screen a subject, press 1."
    assert why_it_may_change(menu, "1", "Enter the site number", False) is None
    assert why_it_may_change("Enter a new PIN", "2468#", "Enter the new PIN again", False) \
        is None
    assert why_it_may_change(menu, "9", "Confirmation number 0 0 0 0 1 2.", False) is None
    assert why_it_may_change(PIN_PROMPT + ", then hash.", "2468#", menu, False) \
        == ("PIN checked", SIGN_IN_TABLES)
    assert why_it_may_change(PIN_PROMPT, "*", menu, False) is None
    assert why_it_may_change("To randomize, press 1. To cancel, press 2.", "1",
                             "Confirmation number 0 0 0 0 4 2.", True)[0] \
        == "confirmed transaction"
    assert must_change("Subject 1 0 1 is not eligible. This is recorded; ...", False)
    assert not must_change("Cancelled. Nothing was recorded.", False)
