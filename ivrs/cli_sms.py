"""``ivrs sms``: text the study's number from the terminal (SPEC §2).

Each TEXT is one message, sent through the ``/sms`` route exactly as Twilio
sends it (``ivrs.texter``), and its reply printed. Several TEXTs are sent in
order, as one phone would: ``ivrs sms --from +33612345678 "KIT 100234" 2468``
opens a session, answers the PIN question and prints both replies. Without
REDIS_URL the session lives in this process only, so the PIN goes in the same
command; with Redis (or ``--url`` to a server) sessions last 15 idle minutes.
A number sent in answer to the PIN question is printed masked.
"""

from __future__ import annotations

import click

from core.errors import IvrsError
from ivrs.cli import handles_errors, main
from ivrs.texter import Texter

YOU, SAID = "you> ", "ivrs> "


@main.command()
@click.option("--from", "sender", required=True, metavar="NUMBER",
              help="The sender's phone number (a registered user's).")
@click.option("--to", default=None, metavar="NUMBER",
              help="The study's number (default: the only study's first number).")
@click.option("--url", default=None, metavar="URL",
              help="A running server (ivrs serve); default: the app in this process.")
@click.argument("texts", nargs=-1, required=True)
@handles_errors
def sms(sender: str, to: str | None, url: str | None, texts: tuple[str, ...]) -> None:
    """Send TEXT (one or more messages) and print each reply."""
    from ivrs.cli_call import default_numbers, open_line  # (cli_call imports ivrs.cli)

    line = open_line(url, needs_database=to is None)
    if to is None and line.db is not None:
        to = default_numbers(line.db)[1]
    texter = Texter(line.transport, sender=sender, to=to or "",
                    auth_token=line.settings.twilio_auth_token,
                    public_base_url=line.settings.public_base_url)
    pin_asked = False
    for text in texts:
        masked = pin_asked and text.replace(" ", "").isdigit()
        click.echo(YOU + ("*" * len(text) if masked else text))
        reply = texter.send(text)
        if reply.status != 200:
            raise IvrsError(f"the server answered HTTP {reply.status} (is TWILIO_AUTH_TOKEN "
                            "the server's?)", code="sms_failed")
        click.echo(SAID + (reply.text or "(no reply)"))
        pin_asked = "PIN" in reply.text and "reply" in reply.text.lower()
