"""``ivrs sms``: text the study from the terminal, through the signed /sms route."""

from __future__ import annotations

from click.testing import CliRunner
from sqlalchemy import select
from test_call_cli import ivrs
from test_sms_flows import randomized_subject

from core.models import Kit
from ivrs.main import main


def test_a_kit_confirmation_from_the_terminal(demo_env):
    subject, (kit,) = randomized_subject(demo_env)
    result = ivrs("sms", "--from", "+33612345678", f"KIT {kit}", "2468")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines == [f"you> KIT {kit}", "ivrs> Please reply with your PIN.", "you> ****",
                     f"ivrs> Kit {kit} confirmed for subject {subject} visit V1. "
                     + lines[3].split(". ", 1)[1]]
    assert "2468" not in result.output
    with demo_env.sessions() as session:
        assert session.scalar(select(Kit.status).where(Kit.kit_number == kit)) == "dispensed"


def test_an_unknown_number_gets_the_generic_reply(demo_env):
    result = ivrs("sms", "--from", "+15550001111", "HELP")
    assert result.exit_code == 0
    assert result.output.splitlines()[-1] == \
        "ivrs> This number is not registered for this service."


def test_a_running_server_with_its_session_across_commands(server, demo_env, monkeypatch):
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", "server-token")
    first = ivrs("sms", "--url", server, "--from", "+33612345678", "--to", "+15005550006",
                 "STOCK")
    assert first.output.splitlines()[-1] == "ivrs> Please reply with your PIN."
    second = ivrs("sms", "--url", server, "--from", "+33612345678", "--to", "+15005550006",
                  "2468")  # the server kept the session: this answers the PIN question
    assert second.output.splitlines()[-1].startswith("ivrs> Site 101: "), second.output


def test_a_wrong_token_is_an_error_and_changes_nothing(server, demo_env, monkeypatch):
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", "not-the-server-s")
    result = CliRunner().invoke(main, ["sms", "--url", server, "--from", "+33612345678",
                                       "--to", "+15005550006", "STOP"])
    assert result.exit_code == 1
    assert "HTTP 403" in result.output
