"""``ivrs demo`` and ``ivrs sms``: the demo, and texting the study's number from the
terminal (SPEC §2); ``ivrs call``, the telephone in the terminal, is in
``ivrs.demo.terminal``.

``ivrs sms``: each TEXT is one message, sent through the ``/sms`` route exactly as
Twilio sends it (``ivrs.demo.texter``), and its reply printed. Several TEXTs are sent in
order, as one phone would: ``ivrs sms --from +33612345678 "KIT 100234" 2468``
opens a session, answers the PIN question and prints both replies. Without
REDIS_URL the session lives in this process only, so the PIN goes in the same
command; with Redis (or ``--url`` to a server) sessions last 15 idle minutes.
A number sent in answer to the PIN question is printed masked.
"""

from __future__ import annotations

import click

from core.errors import IvrsError
from ivrs.cli.common import handles_errors
from ivrs.demo.texter import Texter

YOU, SAID = "you> ", "ivrs> "


@click.command()
@click.option("--dir", "directory", default=None, type=click.Path(file_okay=False),
              help="Where to create the demo database (default: ./ivrs-demo).")
@click.option("--serve", "then_serve", is_flag=True,
              help="Then serve the web console (and the webhooks) on the demo study, "
                   "printing its address and the demo users' passwords.")
@click.option("--host", default="127.0.0.1", show_default=True, help="With --serve.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(1, 65535),
              help="With --serve.")
def demo(directory: str | None, then_serve: bool, host: str, port: int) -> None:
    """Create a demo study in a SQLite file and play calls to it, printed as
    conversations, then the blinded reports. At a terminal, offers a call of
    your own; otherwise scripted, never waiting for input. With --serve, the
    web console then runs on the same study until stopped (Ctrl-C)."""
    from ivrs.demo.scenario import run_demo

    db = run_demo(directory or "ivrs-demo", echo=click.echo,
                  interactive=False if then_serve else None)
    if then_serve:
        from ivrs.demo.console import serve_console

        serve_console(db, host=host, port=port, echo=click.echo)


@click.command()
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
    from ivrs.demo.terminal import default_numbers, open_line

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
