"""``ivrs call``: the terminal phone, scripted, in process and against a running server."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from sqlalchemy import select
from studyfiles import write_study
from voice import PARIS

from core.models import Subject
from core.study_loader import load_study
from ivrs.main import main
from ivrs.demo.terminal import conversation_lines, parse_presses
from ivrs.demo.phone import parse_twiml

MENU = "To screen a subject, press 1."
SCREEN_ONE = "5001# 2468# 1 1"


def ivrs(*args, input=None):
    return CliRunner().invoke(main, list(args), input=input, catch_exceptions=False)


def subject_rows(db) -> list[tuple[str, str]]:
    with db.sessions() as session:
        return session.execute(select(Subject.subject_number, Subject.screened_by)).all()


def test_a_scripted_call_screens_a_subject(demo_env):
    # No TWILIO_AUTH_TOKEN: the in-process app checks signatures against a token
    # made up for the process (an unsigned request would get a 403 and exit 1).
    result = ivrs("call", "--keys", SCREEN_ONE)
    assert result.exit_code == 0, result.output
    out = result.output
    assert "== calling +15005550006 from +33612345678" in out  # the defaults of the study
    assert "ivrs> Welcome to the trial line. Enter your user ID, then press hash." in out
    assert "you> 5001#" in out and "[digits, then #]" in out and "[one key]" in out
    assert "The new subject number is 1 0 1 0 0 0 1." in out
    assert "you> ****#" in out and "2468" not in out  # the PIN is not printed
    assert out.rstrip().endswith("you> (hangs up)")
    assert subject_rows(demo_env) == [("1010001", "user:5001")]


def test_silence_repeats_the_prompt(demo_env):
    result = ivrs("call", "--keys", "5001# 2468# _ 9")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    silence = lines.index("you> (silence)")
    assert MENU in lines[silence - 1] and MENU in lines[silence + 1]
    assert lines[silence + 2] == "you> 9"


def test_piped_keys_one_press_a_line_and_an_empty_line_is_silence(demo_env):
    result = ivrs("call", "--from", PARIS, input="5001#\n2468#\n\n1 1\n")
    assert result.exit_code == 0, result.output
    assert result.output.count("you> (silence)") == 1
    assert "The new subject number is 1 0 1 0 0 0 1." in result.output
    assert subject_rows(demo_env) == [("1010001", "user:5001")]


def test_the_call_ends_when_the_twiml_hangs_up(demo_env):
    result = ivrs("call", "--keys", "_ _ _ 5001#")
    assert result.exit_code == 0, result.output
    assert result.output.count("you> (silence)") == 3
    assert result.output.rstrip().endswith("ivrs> (hangs up)")
    assert "you> 5001#" not in result.output


def test_q_hangs_up_before_the_remaining_keys(demo_env):
    result = ivrs("call", "--keys", "5001# q 2468#")
    assert result.exit_code == 0, result.output
    assert "you> 5001#" in result.output and "you> ****#" not in result.output


def test_keys_that_are_not_keys_are_refused_before_dialing(demo_env):
    result = ivrs("call", "--keys", "5001# x")
    assert result.exit_code == 2
    assert "'x' is not a press" in result.output and "ivrs>" not in result.output


def test_several_studies_need_from_and_to(demo_env, tmp_path):
    other = write_study(tmp_path, ('["+15005550006"]', '["+15005550099"]'), name="other.yaml")
    load_study(demo_env, other)
    result = CliRunner().invoke(main, ["call", "--keys", "1"])
    assert result.exit_code == 1
    assert "several studies are loaded" in result.output and "--from NUMBER" in result.output
    # Told which number to call, the call reaches the demo study.
    result = ivrs("call", "--from", PARIS, "--to", "+15005550006", "--keys", SCREEN_ONE)
    assert "The new subject number is 1 0 1 0 0 0 1." in result.output


def test_language_tag_only_where_the_language_is_not_the_call_s():
    heard = parse_twiml(200, (
        '<Response><Gather numDigits="1" action="voice?step=1">'
        '<Say language="en-US">For English, press 1.</Say>'
        '<Say language="fr-FR">Pour le français, appuyez sur 2.</Say>'
        '<Say language="en-US">Or wait.</Say></Gather></Response>'))
    assert conversation_lines(heard) == [
        "ivrs> For English, press 1.",
        "ivrs> [fr-FR] Pour le français, appuyez sur 2.",
        "ivrs> Or wait.  [one key]"]


def test_parse_presses():
    assert parse_presses(" 5001#  _ # * q ") == ["5001#", None, "#", "*", "q"]
    with pytest.raises(ValueError):
        parse_presses("12a")


def test_a_call_through_url_reaches_a_running_server(server, demo_env, monkeypatch):
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", "server-token")
    result = ivrs("call", "--url", server, "--keys", SCREEN_ONE)
    assert result.exit_code == 0, result.output
    assert f"via {server}" in result.output
    assert "The new subject number is 1 0 1 0 0 0 1." in result.output
    assert subject_rows(demo_env) == [("1010001", "user:5001")]


def test_a_wrong_token_is_refused_by_the_server(server, demo_env, monkeypatch):
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", "not-the-server-s")
    result = CliRunner().invoke(main, ["call", "--url", server, "--keys", SCREEN_ONE])
    assert result.exit_code == 1
    assert "answered 403" in result.output and "TWILIO_AUTH_TOKEN" in result.output
    assert subject_rows(demo_env) == []


def test_url_without_a_database_needs_from(server, monkeypatch):
    monkeypatch.delenv("DATABASE_URL")
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", "server-token")
    result = CliRunner().invoke(main, ["call", "--url", server, "--keys", "1"])
    assert result.exit_code == 1 and "--from NUMBER is needed with --url" in result.output
    result = ivrs("call", "--url", server, "--from", PARIS, "--keys", SCREEN_ONE)
    assert "The new subject number is 1 0 1 0 0 0 1." in result.output
