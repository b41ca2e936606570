"""No English on a translated console page: every page each role reaches, read
in German and in Japanese, scanned for the English catalog's phrases. A page
that shows a core's English sentence (what an approval is about, why the audit
chain is broken) or a raw code (a reason) where a translated message belongs
fails here, naming the page, the role and the phrase.

The pages hold what they show in a trial: a randomized subject, one
discontinued and one failed at screening, an emergency unblinding waiting for
approval, a kit return waiting for approval, a shipment on its way."""

from __future__ import annotations

import html
import re
from functools import cache

import pytest
from babel.messages.pofile import read_po
from sqlalchemy import select, text
from web_support import USERS, make_web

from core import append_only
from core.actors import Actor
from core.audit_checkpoints import forget_checked_tails, record_verification
from core.models import Kit, Site
from core.randomize import randomize
from core.subjects import discontinue, record_screen_failure, screen_subject
from core.supply.returns import declare_return
from core.supply.shipments import dispatch_shipment, request_shipment
from core.web_accounts import set_password
from ivrs.render.catalogs import LOCALES

FACTORS = {"SEX": "F", "AGE": "LT65"}
ELIGIBLE = {"INC1": True, "INC2": True, "EXC1": True}
PASSWORD = "a long web password 4 tests"
APPROVAL_MODE = ("unblinding: {mode: investigator}", "unblinding: {mode: approval}")
# Shorter English phrases are often a language's own (a name, "Randomization"
# borrowed as is) or a code; twelve characters and more are a sentence's.
SHORTEST = 12
# What the study and its users are called: data, not the console's words.
NAMES = ("A phase 3 study of drug X versus placebo",)
_PLACEHOLDER = re.compile(r"\{[^}]*\}")
_HIDDEN = re.compile(r"<(script|style|title)\b.*?</\1>", re.DOTALL | re.IGNORECASE)
# The record as recorded (the audit trail's cells) and codes shown as codes.
_NOT_TRANSLATED = re.compile(r'<(\w+)\b[^>]*\btranslate="no"[^>]*>.*?</\1>|<code>.*?</code>',
                             re.DOTALL)
# A code where words belong: adverse_event, medical_emergency.
_CODE = re.compile(r"\b[a-z][a-z0-9]*(?:_[a-z0-9]+)+\b")
_SHOWN_ATTRIBUTE = re.compile(r'\b(?:aria-label|title|alt|placeholder)="([^"]*)"')
_TAG = re.compile(r"<[^>]*>")


@cache
def english_phrases(language: str) -> frozenset[str]:
    """The English catalog's texts, cut at their placeholders, of SHORTEST
    characters and more, but for those the language's catalog writes too."""
    def texts(code: str) -> dict[str, tuple[str, ...]]:
        with (LOCALES / code / "LC_MESSAGES" / "messages.po").open("rb") as handle:
            return {(m.id if isinstance(m.id, str) else m.id[0]):
                    (m.string if isinstance(m.string, tuple) else (m.string,))
                    for m in read_po(handle) if m.id}
    english = texts("en")
    # A phrase the language itself uses somewhere ("Administrator" in German) is its own.
    theirs = "\n".join(text or "" for strings in texts(language).values() for text in strings)
    phrases = set()
    for strings in english.values():
        for string in strings:
            for piece in _PLACEHOLDER.split(string or ""):
                piece = piece.strip(" .,:;()\"'–-")
                if len(piece) >= SHORTEST and piece not in theirs:
                    phrases.add(piece)
    return frozenset(phrases)


def visible_text(page: str) -> str:
    """What a reader reads or hears of a page: its text and the attributes shown
    or spoken (labels, titles, placeholders), the names of the study aside."""
    page = _NOT_TRANSLATED.sub(" ", _HIDDEN.sub(" ", page))
    shown = " ".join(_SHOWN_ATTRIBUTE.findall(page))
    words = html.unescape(_TAG.sub(" ", page) + " " + shown)
    for name in NAMES:
        words = words.replace(name, " ")
    return re.sub(r"\s+", " ", words)


def english_in(page: str, language: str) -> list[str]:
    """The English phrases and the codes a reader of ``language`` would read."""
    words = visible_text(page)
    return sorted({phrase for phrase in english_phrases(language) if phrase in words}
                  | set(_CODE.findall(words)))


def actor(web, role: str) -> Actor:
    return web.web_user(USERS[role]).actor


def randomized(web, site="101", role="site_coordinator") -> str:
    number = screen_subject(web.db, site_code=site, actor=actor(web, role)).subject_number
    randomize(web.db, subject_number=number, actor=actor(web, role), factors=FACTORS,
              eligibility=ELIGIBLE)
    return number


def kits_at(web, site: str) -> list[str]:
    with web.db.sessions() as session:
        return list(session.scalars(
            select(Kit.kit_number).join(Site, Site.id == Kit.site_id)
            .where(Site.code == site, Kit.status == "available").order_by(Kit.kit_number)))


@pytest.fixture
def trial(db, tmp_path):
    """The console with a trial's worth of pages: (web, the paths to read)."""
    web = make_web(db, tmp_path, APPROVAL_MODE)
    number = randomized(web)
    stopped = randomized(web)
    discontinue(web.db, subject_number=stopped, reason="adverse_event",
                actor=actor(web, "site_coordinator"))
    failed = screen_subject(web.db, site_code="101",
                            actor=actor(web, "site_coordinator")).subject_number
    record_screen_failure(web.db, subject_number=failed, reason="not_eligible",
                          actor=actor(web, "site_coordinator"))
    screened = screen_subject(web.db, site_code="101",
                              actor=actor(web, "site_coordinator")).subject_number
    set_password(web.db, user_code=USERS["investigator"], password=PASSWORD,
                 actor=actor(web, "admin"))
    investigator = web.as_role("investigator")
    investigator.get(f"/subjects/{number}/unblind")
    key = re.search(r'name="idempotency_key" value="([0-9a-f]+)"', investigator.last_page)
    asked = investigator.post(f"/subjects/{number}/unblind", {
        "idempotency_key": key.group(1), "step": "request", "reason": "medical_emergency",
        "confirm": "yes", "password": PASSWORD})
    assert asked.status_code == 200, investigator.text(asked)
    returned = declare_return(web.db, site_code="101", kit_numbers=kits_at(web, "101")[:2],
                              reason="site close-out", actor=actor(web, "site_coordinator"))
    shipment = request_shipment(web.db, site_code="102", actor=actor(web, "investigator_102"),
                                kits_per_type=2)
    dispatch_shipment(web.db, shipment_number=shipment.shipment_number, carrier="DHL",
                      tracking_number="T1", actor=actor(web, "depot_manager"))
    with web.db.sessions() as session:
        unblinding = session.execute(text(
            "SELECT number FROM unblindings ORDER BY id DESC")).scalars().first()
    paths = ["/", "/subjects", f"/subjects/{number}", f"/subjects/{stopped}",
             f"/subjects/{failed}", f"/subjects/{number}/status",
             f"/subjects/{number}/dispense", f"/subjects/{number}/unblind", "/approvals",
             "/approvals?status=all", f"/approvals/{unblinding}",
             f"/approvals/{returned.return_number}", "/shipments",
             f"/shipments/{shipment.shipment_number}", "/quarantine", "/kits", "/kits/lots",
             "/reports", "/audit", "/users", f"/users/{USERS['site_coordinator']}",
             "/softphone", f"/subjects/{screened}", f"/subjects/{screened}/randomize",
             f"/subjects/{number}/replace",
             # refusals and errors: not found, not allowed, bad input
             "/subjects/999999", "/approvals/999999", "/users/0000", "/no-such-page",
             "/audit?start=yesterday"]
    return web, paths


@pytest.mark.parametrize("language", ["de", "ja"])
def test_no_page_shows_english_in_a_translated_language(trial, language):
    web, paths = trial
    found = {}
    for role in sorted(USERS):
        browser = web.as_role(role, language=language)
        for path in paths:
            answer = browser.get(path)
            if answer.mimetype != "text/html":
                continue
            english = english_in(browser.text(answer), language)
            if english:
                found[f"{path} as {role} ({answer.status_code})"] = english
    stranger = web.browser()  # before signing in: the browser's language
    for path in ("/signin", "/signin?timeout=1", "/signin?ended=1", "/invite/not-a-token"):
        english = english_in(stranger.text(stranger.get(
            path, headers={"Accept-Language": language.replace("_", "-")})), language)
        if english:
            found[f"{path} before signing in"] = english
    assert not found, "\n".join(f"{where}: {phrases}" for where, phrases in found.items())


def test_a_subjects_history_gives_its_reasons_in_words(trial):
    web, paths = trial
    browser = web.as_role("site_coordinator", language="de")
    stopped, failed = paths[3], paths[4]
    randomized_and_stopped = visible_text(browser.text(browser.get(stopped)))
    assert "Randomisierung R1" in randomized_and_stopped
    assert "unerwünschtes Ereignis" in randomized_and_stopped
    assert "adverse_event" not in randomized_and_stopped
    assert "nicht geeignet" in visible_text(browser.text(browser.get(failed)))


def test_what_an_approval_is_about_is_in_the_readers_words(trial):
    web, paths = trial
    browser = web.as_role("project_manager", language="de")
    listing = visible_text(browser.text(browser.get("/approvals")))
    subject = paths[2].rsplit("/", 1)[1]
    assert f"Notfall-Entblindung von Teilnehmer {subject} (medizinischer Notfall)" in listing
    assert "Rücksendung von 2 Kits an das Depot" in listing
    japanese = visible_text(web.as_role("project_manager", language="ja").text(
        web.as_role("project_manager", language="ja").get("/approvals")))
    assert f"被験者{subject}の緊急キーオープン（医学的緊急事態）" in japanese


@pytest.mark.parametrize("language", ["de", "ja"])
def test_a_broken_chain_is_explained_in_the_readers_words(trial, language):
    web, _ = trial
    with web.db.engine.begin() as connection:
        for statement in append_only.drop_statements(web.db.engine.dialect.name):
            connection.execute(text(statement))
        connection.execute(text("UPDATE audit_events SET actor = 'someone else' WHERE seq = 5"))
    forget_checked_tails()
    manager = web.as_role("project_manager", language=language)
    verified = manager.post("/audit/verify", form_page="/audit")
    assert verified.status_code == 200
    expected = {"de": "Der Inhalt dieser Zeile wurde verändert",
                "ja": "この行の内容が改変されています"}[language]
    page = visible_text(manager.text(verified))
    assert expected in page and english_in(manager.text(verified), language) == []
    # The dashboard reads the break from the record of a verification (ivrs audit
    # verify's), by its code.
    record_verification(web.db, actor=actor(web, "admin"))
    dashboard = manager.text(manager.get("/"))
    assert expected in visible_text(dashboard) and english_in(dashboard, language) == []
