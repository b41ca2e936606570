"""The ``ivrs`` command end to end: load, import, report, verify, users, demo."""

from __future__ import annotations

import csv
import io
import re

import pytest
from click.testing import CliRunner
from sqlalchemy import text
from studyfiles import MRL_CSV, STUDY_YAML

from core import append_only
from dialogs.output import Digits, Term
from ivrs.main import main


@pytest.fixture
def run(database_env):
    runner = CliRunner()

    def invoke(*args, env=None):
        return runner.invoke(main, list(args), env=env, catch_exceptions=False)

    return invoke


@pytest.fixture
def loaded(run):
    assert run("init").exit_code == 0
    result = run("study", "load", str(STUDY_YAML))
    assert result.exit_code == 0, result.output
    result = run("mrl", "import", str(MRL_CSV))
    assert result.exit_code == 0, result.output
    return run


def test_help_lists_the_commands(run):
    result = run("--help")
    assert result.exit_code == 0
    for command in ("demo", "init", "study", "mrl", "users", "report", "audit"):
        assert command in result.output


def test_reload_reports_no_changes(loaded):
    result = loaded("study", "load", str(STUDY_YAML))
    assert result.exit_code == 0 and "no changes" in result.output


def test_bad_study_file_exits_1_naming_line_and_field(loaded, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(STUDY_YAML.read_text(encoding="utf-8").replace("{A: 2, P: 1}", "{A: 2, X: 1}", 1),
                   encoding="utf-8")
    result = loaded("study", "load", str(bad))
    assert result.exit_code == 1
    assert "bad.yaml:" in result.output and "X" in result.output
    assert "nothing was changed" in result.output


def test_reports_are_blinded_unless_an_unblinded_user_signs(loaded, db):
    from studyfiles import DATA

    from core.actors import ADMIN
    from core.randomize import randomize
    from core.subjects import screen_subject
    from core.supply.kit_import import import_kits

    import_kits(db, DATA / "kits.csv")  # site 101 must hold kits to randomize (V1)
    subject = screen_subject(db, site_code="101", actor=ADMIN)
    randomize(db, subject_number=subject.subject_number, actor=ADMIN,
              eligibility={"INC1": True, "INC2": True, "EXC1": True},
              factors={"SEX": "F", "AGE": "LT65"})
    blinded = loaded("report", "subjects")
    rows = list(csv.DictReader(io.StringIO(blinded.output)))
    assert rows[0]["subject_number"] == subject.subject_number
    assert "arm" not in rows[0] and rows[0]["randomization_number"]
    report = loaded("report", "randomization")
    assert "arm" not in report.output.splitlines()[0]

    refused = loaded("report", "subjects", "--unblinded", "--user", "5001",
                     env={"IVRS_PIN": "2468"})
    assert refused.exit_code == 1 and "blinded" in refused.output
    wrong = loaded("report", "subjects", "--unblinded", "--user", "5004", env={"IVRS_PIN": "0000"})
    assert wrong.exit_code == 1 and "not valid" in wrong.output
    unblinded = loaded("report", "subjects", "--unblinded", "--user", "5004",
                       env={"IVRS_PIN": "9753"})
    assert unblinded.exit_code == 0, unblinded.output
    row = next(csv.DictReader(io.StringIO(unblinded.output)))
    assert row["arm"] in ("A", "P")
    with db.sessions() as s:
        actions = [a for (a,) in s.execute(text("SELECT action FROM audit_events ORDER BY seq"))]
    assert "unblinded_view" in actions and "pin_failed" in actions


def test_audit_verify_detects_tampering(loaded, db):
    ok = loaded("audit", "verify")
    assert ok.exit_code == 0 and "chain intact" in ok.output
    with db.engine.begin() as conn:
        for statement in append_only.drop_statements(db.engine.dialect.name):
            conn.execute(text(statement))
        conn.execute(text("UPDATE audit_events SET reason = 'nothing to see' WHERE seq = 2"))
    broken = loaded("audit", "verify")
    assert broken.exit_code == 1
    assert "BROKEN" in broken.output and "seq 2" in broken.output


def test_user_administration(loaded, db):
    assert loaded("users", "add", "6001", "--name", "Rosalind Franklin", "--role", "pharmacist",
                  "--site", "101", "--phone", "+33600000001", "--language", "fr",
                  "--pin", "1234").exit_code == 0
    assert loaded("users", "lock", "6001").exit_code == 0
    assert loaded("users", "reset-pin", "6001", "--pin", "4321").exit_code == 0
    duplicate = loaded("users", "add", "6001", "--name", "x", "--role", "pharmacist",
                       "--pin", "1234", "--language", "fr")
    assert duplicate.exit_code == 1 and "already exists" in duplicate.output
    bad = loaded("users", "add", "6002", "--name", "x", "--role", "pharmacist", "--pin", "12")
    assert bad.exit_code == 1
    with db.sessions() as s:
        temp, locked = s.execute(text(
            "SELECT pin_temporary, locked FROM users WHERE user_code = '6001'")).one()
        audit = " ".join(str(r) for r in s.execute(text("SELECT new FROM audit_events")))
    assert temp and not locked
    assert "1234" not in audit and "4321" not in audit


def spoken(message_id: str, language: str, **params) -> str:
    from dialogs.output import Say
    from ivrs.render.speech import text

    return text(Say(message_id, params), language)


def spanish_start(message_id: str, **params) -> str:
    """The Spanish text up to its first parameter's value (the rest varies)."""
    return spoken(message_id, "es", **params).split(" 1 0 2")[0]


def test_demo_plays_real_calls_and_prints_them_blinded(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["demo"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    out = result.output
    # Calls, printed as conversations, with who calls from where.
    assert "coordinator at site 101 (Paris) calls +15005550006 from +33612345678" in out
    assert "investigator at site 102 (Barcelona) calls" in out
    assert "you> 5001#" in out and "you> ****#" in out and "you> 2468" not in out
    for subject in ("1010001", "1010002"):
        assert f"Subject {' '.join(subject)} is randomized." in out
    # Each caller hears their own language: Barcelona Spanish, the visit 2 call
    # by Paris's French-speaking coordinator French, Berlin reads German SMS.
    assert spanish_start(
        "rand.done", subject=Digits("1020001"), number=Digits("1062")) in out
    assert "give kit" in out
    assert "Subject 1 0 1 0 0 0 3 is not eligible." in out
    assert "Screen failure of subject 1 0 1 0 0 0 3 recorded." in out
    assert "That is not one of your sites." in out
    assert "dispatched shipment 500001" in out and "Shipment 5 0 0 0 0 1 is received" in out
    assert spoken("kits.give", "fr", kit=Digits("999999"), visit=Term("visit.V2")
                  ).split("9 9 9")[0] in out
    # SMS: the kit-number confirmation asked, a mistyped kit caught, the right ones
    # confirmed (the PIN masked), and a shipment received by SMS with a damaged kit.
    assert "[SMS to +33612345678] Subject 1010001 visit V1: kit no." in out
    assert "Nothing confirmed." in out and "sms> 2468" not in out and "sms> ****" in out
    assert "confirmed for subject 1010001 visit V1" in out
    assert "confirmed for subject 1010002 visit V1" in out
    assert "ivrs> " + spoken("sms.stock", "de", site="103", available=11, quarantined=0,
                             incoming=0) in out
    # Scripted when stdin is not a terminal: no offer to call, no waiting.
    assert "Your turn" not in out
    # The reports, from what the calls did.
    assert "1010003,101,screen_failed" in out and "1020001,102,randomized" in out
    assert "1010001,V2," in out
    assert "audit chain: intact" in out
    # Blinded: no arm name or code, no kit type, no arm column, but for the one answer
    # the investigator gets in an emergency unblinding (the scan: test_blinding_scan).
    (answer,) = [line for line in out.splitlines() if "recibe: " in line]
    assert "Esta apertura del ciego queda registrada con el número 8 0 0 0 0 1" in answer
    assert "[SMS to +447700900456] Subject 1020001 at site 102 was unblinded" in out
    out = out.replace(answer, "")
    for word in ("Drug X", "Placebo", "KA", "KP", ",arm"):
        assert word not in out, word


def test_api_clients_add_list_revoke(loaded, db):
    from ivrs.app import create_app
    from ivrs.config import Settings
    from ivrs.conversations.sessions import MemorySessionStore

    added = loaded("api-clients", "add", "edc-paris", "--role", "site_coordinator",
                   "--site", "101")
    assert added.exit_code == 0, added.output
    token = re.search(r"ivrs_[A-Za-z0-9_-]{40,}", added.output).group(0)
    listed = loaded("api-clients", "list")
    assert listed.exit_code == 0 and token not in listed.output  # shown once, never again
    [row] = list(csv.DictReader(io.StringIO(listed.output)))
    assert (row["name"], row["role"], row["sites"]) == ("edc-paris", "site_coordinator", "101")
    assert token.startswith(row["token"].removesuffix("...")) and row["revoked_at"] == ""

    http = create_app(Settings(database_url="unused"), db=db,
                      store=MemorySessionStore()).test_client()
    bearer = {"Authorization": f"Bearer {token}"}
    assert http.get("/api/v1/sites", headers=bearer).status_code == 200

    for bad, says in ((("edc-2", "--role", "admin"), "role must be one of"),
                      (("edc-2", "--role", "janitor"), "role must be one of"),
                      (("edc-2", "--role", "investigator", "--site", "999"), "999"),
                      (("edc-paris", "--role", "investigator"), "edc-paris")):
        refused = loaded("api-clients", "add", *bad)
        assert refused.exit_code != 0 and says in refused.output, refused.output
    assert len(list(csv.DictReader(io.StringIO(loaded("api-clients", "list").output)))) == 1

    revoked = loaded("api-clients", "revoke", "edc-paris", "--reason", "EDC replaced")
    assert revoked.exit_code == 0, revoked.output
    assert http.get("/api/v1/sites", headers=bearer).status_code == 401
    assert loaded("api-clients", "revoke", "nobody").exit_code != 0


# --- the web console's sign-in: set-password, invite, reset-totp ------------------------

NEW_PASSWORD = "a long passphrase for the web"


@pytest.fixture
def typed(loaded):
    """Commands given standard input (``loaded`` has the study in the database)."""
    runner = CliRunner()

    def invoke(*args, input=None, env=None):
        return runner.invoke(main, list(args), input=input, env=env, catch_exceptions=False)

    return invoke


def test_set_password_from_standard_input(typed, db):
    from core.web_login import sign_in_password

    result = typed("users", "set-password", "5006", "--password-stdin",
                   input=NEW_PASSWORD + "\n")
    assert result.exit_code == 0, result.output
    assert "web password set" in result.output
    signed = sign_in_password(db, user_code="5006", password=NEW_PASSWORD)
    assert signed.role == "project_manager" and signed.second_factor == "enrol"
    with db.sessions() as s:
        audit = " ".join(str(r) for r in s.execute(text("SELECT old, new FROM audit_events")))
    assert NEW_PASSWORD not in audit


def test_set_password_asks_twice_at_a_terminal(typed, db, monkeypatch):
    from core.web_login import sign_in_password
    from ivrs.cli import users

    monkeypatch.setattr(users, "_can_prompt", lambda: True)
    result = typed("users", "set-password", "5001",
                   input=f"{NEW_PASSWORD}\nsomething else entirely\n"
                         f"{NEW_PASSWORD}\n{NEW_PASSWORD}\n")
    assert result.exit_code == 0, result.output
    assert "do not match" in result.output and NEW_PASSWORD not in result.output
    assert sign_in_password(db, user_code="5001", password=NEW_PASSWORD).second_factor == "none"


@pytest.mark.parametrize("env", [{"CI": "true"}, {"CI": ""}])
def test_set_password_without_a_terminal_fails_instead_of_waiting(typed, env):
    # CliRunner's standard input is no terminal; CI=true refuses even at one
    result = typed("users", "set-password", "5001", input="", env=env)
    assert result.exit_code == 1
    assert "--password-stdin" in result.output


def test_set_password_refusals(typed):
    weak = typed("users", "set-password", "5001", "--password-stdin", input="short\n")
    assert weak.exit_code == 1 and "at least 12" in weak.output
    empty = typed("users", "set-password", "5001", "--password-stdin", input="")
    assert empty.exit_code == 1 and "no password" in empty.output
    unknown = typed("users", "set-password", "4242", "--password-stdin",
                    input=NEW_PASSWORD + "\n")
    assert unknown.exit_code == 1 and "no user 4242" in unknown.output


def test_invite_prints_a_one_time_link(typed, db):
    from core.web_login import invited_user, redeem_invite

    result = typed("users", "invite", "5006", "--base-url", "https://ivrs.example.org/")
    assert result.exit_code == 0, result.output
    link = result.stdout.strip()
    assert re.fullmatch(r"https://ivrs\.example\.org/invite/[A-Za-z0-9_-]{43}", link), link
    token = link.rsplit("/", 1)[1]
    assert invited_user(db, token=token) == "5006"
    assert redeem_invite(db, token=token, password=NEW_PASSWORD) == "5006"

    from_env = typed("users", "invite", "5006",
                     env={"PUBLIC_BASE_URL": "https://console.example.org"})
    assert from_env.stdout.startswith("https://console.example.org/invite/")


def test_invite_without_a_base_url_prints_the_token_and_the_path(typed, db, monkeypatch):
    from core.web_login import invited_user

    monkeypatch.delenv("PUBLIC_BASE_URL", raising=False)
    result = typed("users", "invite", "5001")
    assert result.exit_code == 0, result.output
    token = result.stdout.strip()
    assert "/invite/" in result.stderr and "/invite/" not in token
    assert invited_user(db, token=token) == "5001"
    assert typed("users", "invite", "4242").exit_code == 1


def test_reset_totp_clears_the_second_factor(typed, db):
    import pyotp

    from core.actors import ADMIN
    from core.web_login import enrol_totp, new_totp_secret, set_password, sign_in_password

    set_password(db, user_code="5006", password=NEW_PASSWORD, actor=ADMIN)
    secret = new_totp_secret()
    enrol_totp(db, user_code="5006", secret=secret, code=pyotp.TOTP(secret).now())
    assert sign_in_password(db, user_code="5006", password=NEW_PASSWORD).second_factor == "verify"
    result = typed("users", "reset-totp", "5006")
    assert result.exit_code == 0 and "second factor cleared" in result.output
    assert sign_in_password(db, user_code="5006", password=NEW_PASSWORD).second_factor == "enrol"
    assert typed("users", "reset-totp", "4242").exit_code == 1
