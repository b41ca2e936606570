"""``ivrs call``: a telephone in the terminal (SPEC §2).

It speaks to the same dialog code through the same webhook routes as Twilio
does (``ivrs.demo.phone``), and prints the call as a conversation: one ``ivrs>`` line
per ``<Say>``, what the phone waits for, one ``you>`` line per press. The keys
come from the keyboard, or from ``--keys`` / a pipe (scripted), so that the same
code serves a person trying the system, ``ivrs demo`` and the tests.
"""

from __future__ import annotations

import dataclasses
import getpass
import os
import re
import secrets
import shutil
import sys
import textwrap
from collections import Counter
from collections.abc import Callable, Iterable, Iterator

import click
from sqlalchemy import select

from core.db import Database
from core.errors import IvrsError
from ivrs.cli.common import handles_errors, open_database
from ivrs.config import Settings
from ivrs.demo.phone import Heard, Phone, Transport
from ivrs.render.phone import PIN_PROMPTS, asks_for_pin, waits_for  # noqa: F401 — also named here

SAID = "ivrs> "
YOU = "you> "
SILENCE = "_"  # in --keys and piped input: let the gather time out
HANG_UP = "q"
_KEYPAD = re.compile(r"^[0-9*#]+$")
_NUMBER = re.compile(r"\d(?: \d)+")  # a number read digit by digit: "1 0 1 0 0 0 1"

Press = str | None  # keys as typed ("5001#", "1", "#"), None for silence


class CallFailed(IvrsError):
    """The server did not answer with TwiML (a refused signature, a server down)."""


def parse_presses(text: str) -> list[Press]:
    """``"5001# 2468# 1 _ q"`` -> ``["5001#", "2468#", "1", None, "q"]``."""
    presses: list[Press] = []
    for token in text.split():
        if token == SILENCE:
            presses.append(None)
        elif token == HANG_UP or _KEYPAD.match(token):
            presses.append(token)
        else:
            raise ValueError(f"{token!r} is not a press: keys are 0-9, * and #, "
                             f"{SILENCE} is silence, {HANG_UP} hangs up")
    return presses


def spoken_numbers(heard: Heard) -> list[str]:
    """The numbers said digit by digit, in order (subject, kit, confirmation numbers)."""
    return [number.replace(" ", "") for number in _NUMBER.findall(heard.text)]


class TerminalCall:
    """One call on a ``Phone``, printed as a conversation."""

    def __init__(self, phone: Phone, echo: Callable[[str], None], *,
                 width: int | None = None) -> None:
        self.phone, self.echo, self.width = phone, echo, width
        self.heard: Heard | None = None
        self.over = False

    @property
    def ended(self) -> bool:
        return self.over or self.heard is None or self.heard.ended

    def dial(self) -> Heard:
        return self._hear(self.phone.dial())

    def press(self, keys: Press, *, show: bool = True) -> Heard:
        """Answer the last gather; ``show`` prints the press (scripted calls)."""
        if show:
            self.echo(YOU + self._shown(keys))
        return self._hear(self.phone.press(keys))

    def hang_up(self) -> None:
        """The caller hangs up (or the TwiML did): Twilio's status callback ends the session."""
        if self.over:
            return
        if self.heard is not None and not self.heard.ended:
            self.echo(YOU + "(hangs up)")
        self.over = True
        self.phone.hang_up("completed")

    def _shown(self, keys: Press) -> str:
        if keys is None:
            return "(silence)"
        if self.heard is not None and asks_for_pin(self.heard):
            return re.sub(r"[0-9*]", "*", keys)
        return keys

    def _hear(self, heard: Heard) -> Heard:
        if heard.status != 200:
            self.over = True
            hint = " (is TWILIO_AUTH_TOKEN the server's?)" if heard.status == 403 else ""
            raise CallFailed(f"the server answered {heard.status}{hint}: "
                             f"{heard.xml.strip()[:200]}")
        self.heard = heard
        for line in conversation_lines(heard):
            self.echo(self._wrapped(line))
        if heard.ended:
            self.echo(SAID + "(hangs up)")
            self.hang_up()
        return heard

    def _wrapped(self, line: str) -> str:
        if not self.width:
            return line
        return textwrap.fill(line, self.width, subsequent_indent=" " * len(SAID))


def conversation_lines(heard: Heard) -> list[str]:
    """One line per <Say>, tagged with its language when it is not the call's
    (the call's language: the one most of the answer is in, e.g. not the other
    options of a language menu); the last one says what the phone waits for."""
    tags = Counter(language for language, _ in heard.says)
    call_language = tags.most_common(1)[0][0] if tags else ""
    lines = []
    for language, words in heard.says:
        tag = f"[{language}] " if language and language != call_language else ""
        lines.append(SAID + tag + words.strip())
    wait = waits_for(heard)
    if wait and lines:
        lines[-1] += f"  [{wait}]"
    return lines


def play(call: TerminalCall, presses: Iterable[Press]) -> None:
    """Scripted: each press printed as ``you> KEYS``; hangs up when the presses run out."""
    for keys in presses:
        if call.ended:
            break
        if keys == HANG_UP:
            break
        call.press(keys)
    call.hang_up()


def converse(call: TerminalCall, read: Callable[[str, bool], str | None]) -> None:
    """Interactive: ``read(prompt, secret)`` returns a line, or None at the end of input.

    A line holds one or more presses; an empty line is silence; ``q`` hangs up.
    """
    while not call.ended:
        line = read(YOU, asks_for_pin(call.heard))
        if line is None:
            break
        try:
            presses = parse_presses(line) or [None]
        except ValueError as problem:
            call.echo(f"({problem})")
            continue
        for keys in presses:
            if keys == HANG_UP or call.ended:
                break
            call.press(keys, show=False)
        if HANG_UP in presses:
            break
    call.hang_up()


def read_terminal(prompt: str, secret: bool) -> str | None:
    try:
        return getpass.getpass(prompt) if secret else input(prompt)
    except EOFError:  # Ctrl-D: end the prompt's line before the call is hung up
        print()
        return None


def piped_presses(stream) -> Iterator[Press]:
    """Lines of a pipe as presses; an empty line is silence."""
    for line in stream:
        yield from (parse_presses(line) or [None])


def terminal_width() -> int | None:
    """Wrap long prompts only for a person reading a terminal (pipes get one line per Say)."""
    return shutil.get_terminal_size().columns - 1 if sys.stdout.isatty() else None


def default_numbers(db: Database) -> tuple[str, str]:
    """The only study's first user with a phone, and the study's first number."""
    from core.migrate import current_revision
    from core.models import StudyPhoneNumber, User
    from core.studies import get_study

    if current_revision(db.engine) is None:
        raise IvrsError("the database is not initialized: run `ivrs init`, then "
                        "`ivrs study load FILE.yaml`")
    with db.sessions() as session:
        try:
            study = get_study(session)
        except IvrsError as problem:
            if problem.code != "ambiguous_study":
                raise
            raise IvrsError("several studies are loaded: say which number to call from and "
                            "to with --from NUMBER and --to NUMBER") from None
        caller = session.execute(select(User.phone).where(
            User.study_id == study.id, User.phone.is_not(None), User.active.is_(True))
            .order_by(User.id).limit(1)).scalar()
        dialed = session.execute(select(StudyPhoneNumber.number).where(
            StudyPhoneNumber.study_id == study.id).order_by(StudyPhoneNumber.id).limit(1)
        ).scalar()
    if not caller:
        raise IvrsError(f"no user of study {study.code} has a phone: give --from NUMBER")
    return caller, dialed or ""


@dataclasses.dataclass(frozen=True)
class Line:
    """Where the terminal's phone sends its requests, and what signs them."""

    transport: Transport
    settings: Settings
    db: Database | None  # the app's database (None: a server's, unless DATABASE_URL says)


def open_line(url: str | None, *, needs_database: bool) -> Line:
    """A running server (``--url``) or the app in this process, signed like Twilio."""
    from ivrs.app import create_app
    from ivrs.demo.phone import AppTransport, HttpTransport

    settings = Settings.from_env()
    if url:
        if not settings.twilio_auth_token:
            click.echo("warning: TWILIO_AUTH_TOKEN is not set: requests go unsigned and a "
                       "server not started with --dev refuses them", err=True)
        # The server's database gives the default numbers only when we are told where it is.
        db = open_database() if needs_database and os.environ.get("DATABASE_URL") else None
        return Line(HttpTransport(url), settings, db)
    if not settings.twilio_auth_token:
        # Without a token the app would refuse every request (403). Rather than
        # switch the check off, this process makes up a token and signs with it:
        # the in-process request goes through the same signature check as Twilio's.
        settings = dataclasses.replace(settings, twilio_auth_token=secrets.token_urlsafe(32))
    app = create_app(settings)
    return Line(AppTransport(app), settings, app.extensions["ivrs"].db)


@click.command()
@click.option("--from", "caller", default=None, metavar="NUMBER",
              help="The caller's number (default: the first user's phone of the only study).")
@click.option("--to", "dialed", default=None, metavar="NUMBER",
              help="The number dialed (default: the study's first phone number).")
@click.option("--url", default=None, metavar="URL",
              help="A running server (ivrs serve); default: the app in this process.")
@click.option("--keys", default=None, metavar="KEYS",
              help=f'Presses to play, e.g. "5001# 2468# 1 1" ({SILENCE} = silence).')
@handles_errors
def call(caller: str | None, dialed: str | None, url: str | None, keys: str | None) -> None:
    """A phone call in the terminal, through the webhook routes.

    Type keys and Enter: "5001#" for a number, "1" for a menu, several presses
    separated by spaces; an empty line is silence, "#" alone ends a list, "q"
    hangs up. With --keys or piped input the presses are played and printed.
    """
    try:
        scripted = parse_presses(keys) if keys is not None else None
    except ValueError as problem:
        raise click.BadParameter(str(problem), param_hint="--keys") from None
    line = open_line(url, needs_database=caller is None or dialed is None)
    transport, settings, db = line.transport, line.settings, line.db
    if caller is None and db is None:
        raise IvrsError("--from NUMBER is needed with --url (or set DATABASE_URL)")
    if db is not None and (caller is None or dialed is None):
        default_caller, default_dialed = default_numbers(db)
        caller, dialed = caller or default_caller, dialed or default_dialed
    phone = Phone(transport, caller=caller, dialed=dialed or "",
                  auth_token=settings.twilio_auth_token,
                  public_base_url=settings.public_base_url)
    interactive = scripted is None and sys.stdin.isatty()
    terminal = TerminalCall(phone, click.echo, width=terminal_width())
    click.echo(f"== calling {dialed or '(the only study)'} from {caller}"
               + (f" via {url}" if url else "")
               + (" (keys and Enter; empty line: silence; q: hang up)" if interactive else ""))
    terminal.dial()
    if interactive:
        converse(terminal, read_terminal)
    else:
        try:
            play(terminal, scripted if scripted is not None
                 else piped_presses(sys.stdin))
        except ValueError as problem:
            terminal.hang_up()
            raise IvrsError(str(problem)) from None
