"""Outbound e-mail through an SMTP server: the outbox's second channel (SPEC §2).

Configured by ``SMTP_URL`` and ``SMTP_FROM`` (``ivrs.config.parse_smtp_url``:
``smtp://`` plain or with ``?starttls=true``, ``smtps://`` implicit TLS);
without them nothing is sent and the e-mails wait in the outbox (``ivrs
outbox``). ``send_pending_email`` is one pass of the sender, run where the SMS
sender runs (``ivrs serve``'s sender thread, the end of ``ivrs supply run``,
``ivrs outbox send``), on the same durable deliveries (``core.deliveries``):
a user with an e-mail address gets one delivery on channel ``email`` per
notification, beside the SMS to their phone (an SMS opt-out does not stop
e-mail).

One pass:

1. *Expand* (shared with the SMS sender, ``ivrs.outbound.notify.expand``):
   pending notifications become deliveries on every channel; the subject and
   body are rendered in the recipient's language and stored.
2. *Settle the unknown*: an SMTP server cannot be asked afterwards whether it
   took a message, as Twilio's message list can. A delivery left ``sending``
   for more than ``REQUEUE_AFTER`` (five minutes: well beyond the longest
   conversation with a slow server, every exchange of which has a 15 s
   timeout) had an attempt whose outcome nobody recorded: the process died, or
   the connection was lost after the message's content had begun to leave.
   It goes back to the queue and is sent again after the backoff: e-mail is
   *at least once*. A duplicate carries the same ``Message-ID``
   (``<ivrs.<delivery>.<created>@<from domain>>``, stable for the delivery), so
   mail clients and people recognise it as the same message.
3. *Send* what is due, one delivery at a time, each on a connection of its own:
   claim it (its own committed transaction; parallel senders never claim one
   row twice), hand it to the server, record the outcome:

   - accepted (250 after the content): ``sent``, ``provider_sid`` the
     Message-ID's local part;
   - a 4xx reply at any step, a refused or timed-out connection, a connection
     lost before the content left, TLS or authentication failing (our
     configuration, not the message: logged as an error), the server not
     offering STARTTLS or AUTH: nothing was accepted, back to the queue with the
     SMS sender's backoff (30 s doubling to an hour, failed after 8 attempts);
   - a 5xx reply to MAIL, RCPT, DATA or the content: ``failed`` with the code
     (``smtp_550``), never retried; but 530/534/535/538 (authentication
     needed or refused) are our configuration and retried;
   - anything else once the content has begun to leave: outcome unknown, the
     delivery stays ``sending`` for step 2.

   When the server cannot be reached at all, the pass stops after that
   delivery: the others wait for the next pass rather than each spend an
   attempt on a server that is down.

The message: ``email.message.EmailMessage``, plain text in UTF-8 (quoted-
printable or base64, so any server takes it; an address outside ASCII needs
the server's SMTPUTF8), with Subject, From, To, Date, Message-ID and
``Auto-Submitted: auto-generated`` (RFC 3834: no vacation replies to us).

Privacy: the log names deliveries, attempts and SMTP codes, never an address,
a subject, a body or the server's reply text (which often repeats the
address); audit rows are ``core.deliveries``' (no address, no text).
Timestamps are the real UTC clock, as the SMS sender's.
"""

from __future__ import annotations

import logging
import smtplib
import ssl
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.policy import SMTP, SMTPUTF8
from email.utils import format_datetime

from core.clock import as_utc
from core.db import Database
from core.deliveries import (
    EMAIL,
    FAILED,
    QUEUED,
    Claimed,
    claim_next,
    record_failed,
    record_retry,
    record_sent,
    stale_sending,
)
from ivrs.config import Settings, SmtpSettings
from ivrs.outbound.notify import DEFAULT_LIMIT, expand

log = logging.getLogger("ivrs.email")

SMTP_TIMEOUT_SECONDS = 15.0
REQUEUE_AFTER = timedelta(minutes=5)
UNKNOWN_OUTCOME = "unknown_outcome"
# Replies to MAIL FROM that are about our credentials, not the message.
AUTH_CODES = frozenset({530, 534, 535, 538})


# --- the message ----------------------------------------------------------------------------


def message_id_local(claimed: Claimed) -> str:
    """The local part of the delivery's Message-ID (also its ``provider_sid``):
    the same for every attempt, unique across databases in practice (the
    delivery's id and the microsecond it was made)."""
    created = (claimed.created_at or claimed.attempt_started_at).astimezone(UTC)
    return f"ivrs.{claimed.id}.{created:%Y%m%dT%H%M%S%fZ}"


def build_message(claimed: Claimed, from_address: str, *, now: datetime) -> EmailMessage:
    """The e-mail of ``claimed``: plain text, UTF-8."""
    international = not (from_address.isascii() and (claimed.to_email or "").isascii())
    message = EmailMessage(policy=SMTPUTF8 if international else SMTP)
    message["Subject"] = claimed.subject or ""
    message["From"] = from_address
    message["To"] = claimed.to_email or ""
    message["Date"] = format_datetime(now.astimezone(UTC))
    domain = from_address.rpartition("@")[2]
    message["Message-ID"] = f"<{message_id_local(claimed)}@{domain}>"
    message["Auto-Submitted"] = "auto-generated"
    message.set_content(claimed.body, charset="utf-8")
    return message


# --- one conversation with the server -------------------------------------------------------


class _Tracking:
    """An SMTP client that knows whether the message's content has begun to leave:
    before that, a lost connection means the server took nothing; after, nobody
    knows."""

    content_started = False
    _in_data = False

    def data(self, msg):
        self._in_data = True
        try:
            return super().data(msg)
        finally:
            self._in_data = False

    def send(self, s):
        if self._in_data and not isinstance(s, str):  # the content (the DATA command is str)
            self.content_started = True
        return super().send(s)


class _Smtp(_Tracking, smtplib.SMTP):
    pass


class _SmtpTls(_Tracking, smtplib.SMTP_SSL):
    pass


def _tls_context() -> ssl.SSLContext:
    """The server's certificate is verified against the system's authorities."""
    return ssl.create_default_context()


@dataclass(frozen=True)
class Outcome:
    kind: str  # "sent" | "retry" | "failed" | "unknown"
    code: str | None = None
    unreachable: bool = False  # the server could not be reached: end the pass


class _Refused(Exception):
    """The server answered ``code`` at ``step``."""

    def __init__(self, step: str, code: int):
        super().__init__(step, code)
        self.step, self.code = step, code


def _open(settings: SmtpSettings) -> _Tracking:
    # Host and port given to the constructor, which connects: TLS (implicit and
    # STARTTLS alike) checks the certificate against the host it was given there.
    try:
        if settings.security == "tls":
            smtp = _SmtpTls(settings.host, settings.port, timeout=SMTP_TIMEOUT_SECONDS,
                            context=_tls_context())
        else:
            smtp = _Smtp(settings.host, settings.port, timeout=SMTP_TIMEOUT_SECONDS)
    except smtplib.SMTPConnectError as error:  # a greeting other than 220 (closed already)
        raise _Refused("greeting", error.smtp_code) from None
    try:
        smtp.ehlo_or_helo_if_needed()
        if settings.security == "starttls":
            smtp.starttls(context=_tls_context())
            smtp.ehlo()
        if settings.username:
            smtp.login(settings.username, settings.password or "")
    except BaseException:
        smtp.close()
        raise
    return smtp


def deliver(settings: SmtpSettings, claimed: Claimed, *, now: datetime) -> Outcome:
    """Hand ``claimed`` to the server; what became of it (never raises)."""
    try:
        message = build_message(claimed, settings.from_address, now=now)
        payload = message.as_bytes()
    except Exception as error:  # noqa: BLE001 — a message that cannot be written never will be
        log.error("delivery %s: the e-mail cannot be written (%s)", claimed.id,
                  type(error).__name__)
        return Outcome("failed", "bad_message")
    international = message.policy.utf8
    smtp = None
    try:
        try:
            smtp = _open(settings)
        except _Refused as refused:
            log.error("delivery %s: the mail server refused the connection (%d); retried later",
                      claimed.id, refused.code)
            return Outcome("retry", f"smtp_{refused.code}", unreachable=True)
        except smtplib.SMTPAuthenticationError as error:
            log.error("delivery %s: the mail server refused our credentials (%s): check "
                      "SMTP_URL's user and password; retried later", claimed.id, error.smtp_code)
            return Outcome("retry", f"smtp_{error.smtp_code}", unreachable=True)
        except smtplib.SMTPNotSupportedError:
            log.error("delivery %s: the mail server offers no %s; check SMTP_URL; retried later",
                      claimed.id, "STARTTLS" if settings.security == "starttls" else "AUTH")
            return Outcome("retry", "smtp_unsupported", unreachable=True)
        except ssl.SSLError as error:
            log.error("delivery %s: TLS with the mail server failed (%s); retried later",
                      claimed.id, type(error).__name__)
            return Outcome("retry", "tls_error", unreachable=True)
        except smtplib.SMTPResponseException as error:  # HELO/EHLO or STARTTLS refused
            log.warning("delivery %s: the mail server answered %s while we greeted it; "
                        "retried later", claimed.id, error.smtp_code)
            return Outcome("retry", f"smtp_{error.smtp_code}", unreachable=True)
        except (OSError, smtplib.SMTPException) as error:
            log.warning("delivery %s: mail server unreachable (%s); retried later", claimed.id,
                        type(error).__name__)
            return Outcome("retry", _network_code(error), unreachable=True)
        if international and not smtp.has_extn("smtputf8"):
            log.error("delivery %s: the address needs SMTPUTF8, which the mail server does "
                      "not offer", claimed.id)
            return Outcome("failed", "smtputf8")
        options = ["SMTPUTF8", "BODY=8BITMIME"] if international else []
        code, _ = smtp.mail(settings.from_address, options)
        if code != 250:
            raise _Refused("MAIL", code)
        code, _ = smtp.rcpt(claimed.to_email)
        if code not in (250, 251):
            raise _Refused("RCPT", code)
        try:
            code, _ = smtp.data(payload)
        except smtplib.SMTPDataError as error:  # DATA itself refused: no content left
            raise _Refused("DATA", error.smtp_code) from None
        if code != 250:
            raise _Refused("content", code)
        _quit(smtp)
        return Outcome("sent", message_id_local(claimed))
    except _Refused as refused:
        _reset(smtp)
        return _refusal(claimed, refused)
    except Exception as error:  # noqa: BLE001 — whatever it is, the outcome must be settled
        if smtp is not None and smtp.content_started:
            log.warning("delivery %s: connection lost after the content left (%s); outcome "
                        "unknown, sent again after %s", claimed.id, type(error).__name__,
                        REQUEUE_AFTER)
            smtp.close()
            return Outcome("unknown")
        log.warning("delivery %s: the mail server went away before the message (%s); "
                    "retried later", claimed.id, type(error).__name__)
        if smtp is not None:
            smtp.close()
        return Outcome("retry", _network_code(error))


def _refusal(claimed: Claimed, refused: _Refused) -> Outcome:
    code = f"smtp_{refused.code}"
    if refused.step == "MAIL" and refused.code in AUTH_CODES:
        log.error("delivery %s: the mail server wants other credentials (%d): check "
                  "SMTP_URL; retried later", claimed.id, refused.code)
        return Outcome("retry", code)
    if 400 <= refused.code < 500:
        log.warning("delivery %s: the mail server answered %d to %s; retried later",
                    claimed.id, refused.code, refused.step)
        return Outcome("retry", code)
    if 500 <= refused.code < 600:
        log.error("delivery %s: the mail server refused the message: %d to %s", claimed.id,
                  refused.code, refused.step)
        return Outcome("failed", code)
    log.warning("delivery %s: unexpected reply %d to %s; retried later", claimed.id,
                refused.code, refused.step)
    return Outcome("retry", code)


def _network_code(error: BaseException) -> str:
    # smtplib reports a timed-out reply as a disconnection, raised from the timeout
    if isinstance(error, TimeoutError) or isinstance(error.__context__, TimeoutError):
        return "timeout"
    if isinstance(error, smtplib.SMTPServerDisconnected):
        return "disconnected"
    return "connect_error"


def _reset(smtp) -> None:
    if smtp is None:
        return
    try:
        smtp.rset()
        smtp.quit()
    except Exception:  # noqa: BLE001 — the outcome is known; the connection does not matter
        smtp.close()


def _quit(smtp) -> None:
    try:
        smtp.quit()
    except Exception:  # noqa: BLE001 — the server took the message; the goodbye does not matter
        smtp.close()


# --- one pass --------------------------------------------------------------------------------


@dataclass
class EmailReport:
    configured: bool = True
    expanded: int = 0  # notifications turned into deliveries (for every channel)
    queued: int = 0  # e-mail deliveries created to be sent
    sent: int = 0  # the mail server took the message
    retrying: int = 0  # back in the queue after a failed attempt
    failed: int = 0  # given up (refused with a 5xx, no text, retries exhausted)
    requeued: int = 0  # outcome unknown for longer than REQUEUE_AFTER: sent again
    uncertain: int = 0  # outcome unknown in this pass: requeued by a later one

    def summary(self) -> str:
        if not self.configured:
            return "outbound e-mail not configured: nothing sent"
        return ", ".join(f"{field.name.replace('_', ' ')} {getattr(self, field.name)}"
                         for field in fields(self) if field.name != "configured")


def send_pending_email(db: Database, settings: Settings | SmtpSettings | None, *,
                       now: datetime | None = None,
                       limit: int = DEFAULT_LIMIT) -> EmailReport:
    """One pass of the e-mail sender (expand, settle the unknown, send what is
    due); see the module docstring. ``now`` (tests) moves the sender's clock."""
    server = settings.smtp if isinstance(settings, Settings) else settings
    if server is None:
        return EmailReport(configured=False)
    now = datetime.now(UTC) if now is None else as_utc(now).astimezone(UTC)
    report = EmailReport()
    expansion = expand(db, now=now, limit=limit)
    report.expanded = expansion.notifications
    report.queued, report.failed = expansion.count(QUEUED, EMAIL), expansion.count(FAILED, EMAIL)
    for claimed in stale_sending(db, now=now, older_than=REQUEUE_AFTER, channel=EMAIL):
        log.info("delivery %s: attempt %d has no known outcome; sent again (same Message-ID)",
                 claimed.id, claimed.attempt)
        status = record_retry(db, claimed, UNKNOWN_OUTCOME, now=now)
        report.requeued += status == QUEUED
        report.failed += status == FAILED
    for _ in range(limit):
        claimed, _ = claim_next(db, now=now, channel=EMAIL)
        if claimed is None:
            break
        outcome = deliver(server, claimed, now=now)
        _record(db, claimed, outcome, now, report)
        if outcome.unreachable:
            break  # the rest waits for the next pass
    if report.sent or report.failed or report.retrying or report.uncertain or report.requeued:
        log.info("outbound e-mail: %s", report.summary())
    return report


def _record(db: Database, claimed: Claimed, outcome: Outcome, now: datetime,
            report: EmailReport) -> None:
    if outcome.kind == "unknown":
        report.uncertain += 1
        return
    try:
        if outcome.kind == "sent":
            report.sent += record_sent(db, claimed, outcome.code, now=now)
        elif outcome.kind == "failed":
            report.failed += record_failed(db, claimed, outcome.code, now=now)
        else:
            status = record_retry(db, claimed, outcome.code, now=now)
            report.retrying += status == QUEUED
            report.failed += status == FAILED
    except Exception:
        # Left ``sending``: requeued after REQUEUE_AFTER (at least once, same Message-ID).
        log.exception("delivery %s: outcome %s not recorded; settled later", claimed.id,
                      outcome.kind)
        report.uncertain += 1
