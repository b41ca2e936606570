"""Requests no Twilio would send, signed as if it had (a compromised account, a
buggy carrier, an odd phone): each field is parsed strictly (``core.fields``),
what goes back is well-formed whatever came in (``core.output_text``), bad input
is told it was not understood (never the apology for a fault of ours), nothing
changes, and each is a structured security event (``core.security_events``)."""

from __future__ import annotations

import ast
import json
import logging
import urllib.parse
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from sqlalchemy import func, select
from twilio.request_validator import RequestValidator
from voice import PARIS, TOKEN, says

from core import fields
from core.models import AuditEvent, Subject

ROOT = Path(__file__).resolve().parents[1]
NOT_UNDERSTOOD_CALL = "this request could not be understood"
NOT_UNDERSTOOD_SMS = "your message could not be read"
FAULT = ("cannot take your call", "went wrong on our side")


def look_alikes(step: int) -> list[str]:
    """Step ``step`` as Python's int() would read it, though we never write it so."""
    written = str(step)
    other_digits = {"arabic-indic": 0x0660, "full-width": 0xFF10, "devanagari": 0x0966}
    return [f"+{written}", f"0{written}", f" {written}", f"{written}\n", f"{written}_",
            *("".join(chr(base + int(d)) for d in written) for base in other_digits.values())]


def counts(db) -> tuple[int, int]:
    with db.reads() as session:
        return (session.scalar(select(func.count()).select_from(Subject)),
                session.scalar(select(func.count()).select_from(AuditEvent)))


def security_events(caplog) -> list[dict]:
    return [json.loads(record.getMessage()) for record in caplog.records
            if record.name == "ivrs.security"]


# --- 1. look-alike step tokens ---------------------------------------------------------------


def test_look_alike_step_tokens_are_not_acted_on(voice, caplog):
    phone = voice.signed_in()
    heard = phone.press("1")  # screen a subject: "... to confirm, press 1"
    step = int(heard.action.split("step=")[1])
    before = counts(voice.db)
    caplog.set_level(logging.INFO)
    for token in look_alikes(step):
        status, body = phone._send(f"/voice?step={urllib.parse.quote(token)}", {"Digits": "1"})
        assert status == 200 and NOT_UNDERSTOOD_CALL in body, (token, body)
        assert counts(voice.db) == before, f"step {token!r} was acted on"
    refused = security_events(caplog)
    assert [e["event"] for e in refused] == ["step_refused"] * len(look_alikes(step))
    assert all(e["request"] == phone.call_sid for e in refused)
    # The genuine request for that step is answered afresh, not as a replay of a forgery.
    heard = phone.press("1")
    assert says(heard, "new subject number is"), heard.text
    assert counts(voice.db)[0] == before[0] + 1


def test_keys_no_keypad_sends_are_not_understood_and_change_nothing(voice):
    phone = voice.signed_in()
    heard = phone.press("1")
    before = counts(voice.db)
    for keys in ("1\u0661", "\uff11", "1 ", "1a", "<Say>", "1\x00"):
        status, body = phone._send("/" + heard.action, {"Digits": keys})
        assert status == 200 and NOT_UNDERSTOOD_CALL in body, (keys, body)
    assert counts(voice.db) == before
    assert says(phone.press("1"), "new subject number is")


def test_the_field_rules_refuse_every_look_alike():
    for token in look_alikes(4) + ["", "-4", "4.0", "٤", "²", "4" * 6]:
        assert fields.step_token(token) is None, token
    assert fields.step_token("4") == "4" and fields.step_token("0") == "0"
    assert not fields.is_digits("²") and not fields.is_digits("12\n")
    assert fields.is_digits("0012") and not fields.is_digits("1" * 21)
    assert fields.keypad("12*#") == "12*#" and fields.keypad("12 ") is None
    assert fields.keypad("1" * 100 + "x") is None and len(fields.keypad("1" * 100)) == 64
    assert fields.phone("+33612345678") and fields.phone("anonymous") is None
    assert fields.sid("CA" + "0" * 32) and fields.sid("CA0\n") is None


# --- 2. what goes back is well-formed --------------------------------------------------------


def _signed_sms(voice, form: dict) -> str:
    signature = RequestValidator(TOKEN).compute_signature("http://localhost/sms", form)
    response = voice.app.test_client().post("/sms", data=form,
                                            headers={"X-Twilio-Signature": signature})
    assert response.status_code == 200
    return response.get_data(as_text=True)


@pytest.mark.parametrize("hostile", ["\x00", "\x01\x08", "\x1b[31m", "\ufffe\uffff", "\x0b\x0c",
                                     "\u202eevil", "<Say>&amp;]]>"])
def test_an_sms_reply_echoing_hostile_text_is_valid_twiml(voice, hostile):
    texter = voice.texter()
    texter.send(f"LANG xx{hostile}")  # LANG echoes its argument, once signed in
    reply = texter.send("2468")
    root = ET.fromstring(reply.xml)  # raises if the reply is not XML
    assert root.tag == "Response" and [child.tag for child in root] == ["Message"]
    message = root[0].text
    assert "\u202e" not in message and "\x1b" not in message
    if not hostile.startswith("<"):  # markup is not a language code: LANG explains itself
        assert "xx" in message and "is not offered" in message, message


def test_report_cells_drop_what_their_files_cannot_carry():
    import io

    from core.reports import write_table

    stream = io.StringIO()
    write_table(stream, ["reason"], [("ok\x00\x1b \ufffe",)])
    assert stream.getvalue() == "reason\nok \n"


# --- 3. bad input is not an outage -----------------------------------------------------------


@pytest.mark.parametrize("form,field", [
    ({"From": PARIS, "Body": "HELP"}, "MessageSid"),
    ({"MessageSid": "SM" + "1" * 32, "Body": "x"}, "From"),
    ({"MessageSid": "bad sid!", "From": PARIS}, "MessageSid"),
    ({"MessageSid": "SM" + "2" * 32, "From": "+33 6 12", "Body": "x"}, "From"),
    ({"MessageSid": "SM" + "3" * 32, "From": PARIS, "Body": "x" * 1601}, "Body"),
])
def test_an_sms_without_twilio_s_fields_is_not_understood(voice, caplog, form, field):
    caplog.set_level(logging.INFO)
    body = _signed_sms(voice, form)
    assert NOT_UNDERSTOOD_SMS in body and not any(fault in body for fault in FAULT)
    assert security_events(caplog) == [
        {"channel": "sms", "event": "bad_input", "field": field,
         "request": fields.sid(form.get("MessageSid"))}]


def test_a_json_body_is_not_understood(voice):
    signature = RequestValidator(TOKEN).compute_signature("http://localhost/sms", {})
    response = voice.app.test_client().post(
        "/sms", json={"MessageSid": "SM" + "4" * 32, "From": PARIS, "Body": "HELP"},
        headers={"X-Twilio-Signature": signature})
    assert response.status_code == 200
    assert NOT_UNDERSTOOD_SMS in response.get_data(as_text=True)


def test_a_call_without_a_call_sid_is_not_understood(voice):
    form = {"From": PARIS, "To": "+15005550006"}
    signature = RequestValidator(TOKEN).compute_signature("http://localhost/voice", form)
    response = voice.app.test_client().post("/voice", data=form,
                                            headers={"X-Twilio-Signature": signature})
    text = response.get_data(as_text=True)
    assert response.status_code == 200 and NOT_UNDERSTOOD_CALL in text
    assert not any(fault in text for fault in FAULT)


# --- 4. security events ----------------------------------------------------------------------


def test_security_events_are_one_json_line_each_without_secrets(voice, caplog):
    caplog.set_level(logging.INFO)
    phone = voice.phone()
    phone.auth_token = "not-the-token"
    assert phone.dial().status == 403
    phone.auth_token = TOKEN
    phone.dial()
    phone.press("5001#")
    for _ in range(3):
        phone.press("9999#")
        if phone.last.ended:
            break
        phone.press("5001#")
    voice.texter("+15550009999").send("HELP 2468")
    events = security_events(caplog)
    assert [e["event"] for e in events] == ["signature_refused", "lockout", "unknown_caller"]
    assert events[1] == {"channel": "voice", "event": "lockout", "request": phone.call_sid,
                         "user": "5001"}
    lines = [r.getMessage() for r in caplog.records if r.name == "ivrs.security"]
    assert not any(secret in line for line in lines for secret in ("9999", "2468", "HELP"))


# --- one boundary: no TwiML is built anywhere else --------------------------------------------


def _python_files():
    for folder in ("core", "dialogs", "ivrs"):
        yield from (ROOT / folder).rglob("*.py")
    yield ROOT / "webhooks.py"


def test_twiml_is_built_in_one_module_and_every_text_passes_the_filter():
    twiml = ROOT / "ivrs" / "render" / "twiml.py"
    builders = []
    for path in _python_files():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("twilio.twiml"):
                builders.append(path.relative_to(ROOT).as_posix())
    assert sorted(set(builders)) == ["ivrs/render/twiml.py"]
    # In that module, text reaches the builders only in _say and _message, which filter it.
    tree = ast.parse(twiml.read_text(encoding="utf-8"))
    for function in (n for n in tree.body if isinstance(n, ast.FunctionDef)):
        calls = [n for n in ast.walk(function) if isinstance(n, ast.Call)
                 and isinstance(n.func, ast.Attribute) and n.func.attr in ("say", "message")]
        if function.name in ("_say", "_message"):
            first = calls[0].args[0]
            assert isinstance(first, ast.Call) and first.func.id == "for_medium", function.name
        else:
            assert not calls, f"{function.name} builds TwiML text itself"
