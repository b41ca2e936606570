"""Outbound SMS through Twilio's REST API: the outbox's sender (SPEC §2, §3), and
the texts of notifications on every channel.

Configured by ``TWILIO_ACCOUNT_SID``, ``TWILIO_AUTH_TOKEN`` and
``TWILIO_FROM_NUMBER``; without them nothing is sent, nothing changes, and the
notifications wait in the outbox (``ivrs outbox``). ``send_pending`` is one
pass of the sender: ``ivrs serve`` runs it every few seconds (ivrs.outbound.scheduler),
``ivrs supply run`` at its end, ``ivrs outbox send`` by hand. The e-mail
sender (``ivrs.outbound.email``) works the same queue on its own channel.

One pass:

1. *Expand*: each pending notification becomes one delivery per recipient and
   channel (``core.deliveries``: SMS to a user with a phone, e-mail to a user
   with an address), its text rendered in the recipient's language and
   stored. Whichever sender runs first expands for both channels: the other
   channel's deliveries wait ``queued`` for their sender (``ivrs outbox`` lists
   them). A message queued by a transaction that rolled back does not exist,
   so it is never sent; one that committed is a row that waits, whatever
   happens to the process, until a pass sends it.
2. *Reconcile*: a delivery left ``sending`` for more than a minute had an
   attempt whose outcome nobody recorded (the process died, or the request
   timed out or lost its connection after it left). Twilio's message list to
   that number from our number is read: a message with the same body created
   after the attempt started (five minutes of clock skew allowed) and not
   recorded for another delivery means Twilio took it: ``sent`` with that sid.
   None means it never arrived: the delivery goes back to the queue. The list
   is not filtered with ``DateSent>``: a message Twilio has accepted but not
   yet sent has no send date and would be missed, then sent twice.
3. *Send* what is due, one delivery at a time: claim it (its own committed
   transaction; parallel senders never claim one row twice), POST it, record
   the outcome. Twilio's error answers mean no message was created: 429,
   5xx, refused credentials (401: a configuration error must not fail every
   message) and a refused connection put the delivery back in the queue with
   exponential backoff (30 s doubling to an hour, failed after 8 attempts);
   21610 (the recipient unsubscribed from our number) opts the user out,
   never retried; any other 4xx fails the delivery with Twilio's code. Any other error after
   the request may have left (a timeout, a dropped connection, a garbled
   answer) leaves the delivery ``sending`` for step 2 to settle, so a message
   is never sent twice because an answer was lost.

The one window left: a sender that stops for more than a minute between its
claim and its request (a frozen VM) could send a message that another
sender's reconciliation has already put back in the queue. The HTTP timeout
(15 s) keeps a live sender's requests well inside that minute.

Status callbacks (``POST /sms/status``, when ``PUBLIC_BASE_URL`` is set so
that Twilio can reach us) move a delivery forward with ``record_status``.

Timestamps of the sender are the real UTC clock, not ``IVRS_TODAY``: backoff
and reconciliation compare them with Twilio's own clock.

``TWILIO_API_BASE_URL`` (test doubles, UAT sandboxes; ignored in production)
sends the REST client's requests to another server instead of
https://api.twilio.com, at the HTTP boundary: the twilio library is used
unchanged.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, fields
from datetime import UTC, date, datetime, timedelta
from urllib.parse import urlsplit, urlunsplit

import requests
from sqlalchemy import select
from twilio.base.exceptions import TwilioRestException
from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client
from urllib3.exceptions import ConnectTimeoutError

from core.audit import UNBLINDED_KEYS
from core.clock import as_utc
from core.db import Database
from core.deliveries import (
    EMAIL,
    FAILED,
    OPTED_OUT,
    OPTED_OUT_CODE,
    PROVIDER_STATUSES,
    QUEUED,
    SENT,
    SMS,
    WAITING,
    Claimed,
    Expansion,
    Rendered,
    audience_users,
    channels,
    claim_next,
    expand_pending,
    record_failed,
    record_provider_status,
    record_recipient_opted_out,
    record_retry,
    record_sent,
    stale_sending,
)
from core.fields import digits
from core.models import Delivery, Notification, User
from core.output_text import for_medium
from core.supply.outbox import EXPANDED, PENDING
from dialogs.output import Say
from ivrs.config import Settings
from ivrs.render.sms_text import for_sms
from ivrs.render.speech import SOURCE_LANGUAGE, text

log = logging.getLogger("ivrs.notify")
# The twilio library logs every request and answer at INFO, six lines each,
# list queries with the recipient's number: ours says what matters once.
http_log = logging.getLogger("ivrs.notify.twilio_http")
http_log.setLevel(logging.WARNING)

HTTP_TIMEOUT_SECONDS = 15.0
RECONCILE_AFTER = timedelta(minutes=1)
CLOCK_SKEW = timedelta(minutes=5)
RECONCILE_LIST_LIMIT = 50  # the most recent messages to a number that reconciliation reads
DEFAULT_LIMIT = 500  # deliveries sent per pass
STATUS_PATH = "/sms/status"
SID_PATTERN = re.compile(r"[A-Z]{2}[0-9a-fA-F]{32}")


class BaseUrlHttpClient(TwilioHttpClient):
    """Twilio's own HTTP client, with ``https://api.twilio.com`` (and any other
    ``*.twilio.com`` host) replaced by ``base_url``."""

    def __init__(self, base_url: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.base = urlsplit(base_url.rstrip("/"))

    def request(self, method, url, *args, **kwargs):
        parts = urlsplit(url)
        if parts.hostname == "twilio.com" or (parts.hostname or "").endswith(".twilio.com"):
            url = urlunsplit((self.base.scheme, self.base.netloc, self.base.path + parts.path,
                              parts.query, parts.fragment))
        return super().request(method, url, *args, **kwargs)


@dataclass(frozen=True)
class Gateway:
    """What the sender needs: a Twilio REST client, our number, the callback URL."""

    client: Client
    from_number: str
    status_callback: str | None = None


def gateway(settings: Settings) -> Gateway | None:
    """The Twilio gateway the settings describe, or None when outbound SMS is not
    configured (account sid, auth token and from number are all needed)."""
    if not (settings.twilio_account_sid and settings.twilio_auth_token
            and settings.twilio_from_number):
        return None
    base_url = settings.twilio_api_base_url
    if base_url and settings.environment == "production":
        log.warning("TWILIO_API_BASE_URL=%s ignored: IVRS_ENV is production", base_url)
        base_url = None
    options = {"timeout": HTTP_TIMEOUT_SECONDS, "logger": http_log}
    http_client = (BaseUrlHttpClient(base_url, **options) if base_url
                   else TwilioHttpClient(**options))
    client = Client(settings.twilio_account_sid, settings.twilio_auth_token,
                    http_client=http_client)
    callback = settings.public_base_url + STATUS_PATH if settings.public_base_url else None
    return Gateway(client, settings.twilio_from_number, callback)


# --- rendering ---------------------------------------------------------------------------


def render(notification: Notification, user: User) -> str:
    """The SMS text ``user`` gets for ``notification``, in the user's language (""
    when the message id has no text). Unblinded parameters are never offered to
    the template, whatever a notification carries."""
    return _text(notification, user.language)


def render_for(notification: Notification, user: User, channel: str) -> Rendered:
    """What ``user`` gets for ``notification`` on ``channel``: the SMS text, or the
    e-mail's subject and body. The body is the same message as the SMS, written
    as the language writes it (an SMS drops the accents GSM-7 lacks, an e-mail
    is UTF-8 and keeps them)."""
    if channel == EMAIL:
        return Rendered(_text(notification, user.language, EMAIL),
                        email_subject(notification, user.language))
    return Rendered(render(notification, user))


def _text(notification: Notification, language: str, channel: str = SMS) -> str:
    params = {name: _typed(name, value) for name, value in (notification.params or {}).items()
              if name not in UNBLINDED_KEYS}
    words = text(Say(notification.message_id, params), language).strip()
    return for_medium(words, "email") if channel == EMAIL else for_sms(words)


# An e-mail's subject: the study and what the message is about, by the kind of the
# notification (never more: the body says the rest, and the subject of an e-mail
# travels further than its body, into lists and notifications on a locked screen).
_URGENT = Say("email.subject.supply_urgent")
_SUBJECTS = {
    "expiry_warning": Say("email.subject.expiry"),
    "kit_confirmation": Say("email.subject.kit_confirmation"),
    "shipment": Say("email.subject.supply"),
    "depot_short": Say("email.subject.supply"),
    "urgent_resupply": _URGENT,
    "unblinding": Say("email.subject.unblinding"),
    "subject_unblinded": Say("email.subject.unblinding"),
    "return": Say("email.subject.return"),
}
_OTHER = Say("email.subject.other")


def email_subject(notification: Notification, language: str) -> str:
    """The subject line of ``notification``'s e-mail in ``language``: one line."""
    kind = notification.kind or ""
    say = next((say for prefix, say in _SUBJECTS.items()
                if kind == prefix or kind.startswith(prefix + "_")), _OTHER)
    if "urgent" in (notification.message_id or "").split("."):
        say = _URGENT
    words = text(Say(say.id, {"study": notification.study.code}), language)
    return " ".join(for_medium(words, "email").split())


def _typed(name: str, value):
    """Parameters are stored as JSON: an ISO ``*_date`` becomes a date again, so
    that the recipient reads it in their language's long form."""
    if name.endswith("_date") and isinstance(value, str):
        try:
            return date.fromisoformat(value)
        except ValueError:
            return value
    return value


# --- one pass ----------------------------------------------------------------------------


@dataclass
class SendReport:
    configured: bool = True
    expanded: int = 0  # notifications turned into deliveries (for every channel)
    queued: int = 0  # SMS deliveries created to be sent
    sent: int = 0  # Twilio took the message
    reconciled: int = 0  # of the sent: found at Twilio after a lost answer
    retrying: int = 0  # back in the queue after a failed attempt
    failed: int = 0  # given up (Twilio refused it, no text, retries exhausted)
    opted_out: int = 0  # not sent: the recipient opted out
    uncertain: int = 0  # outcome unknown: reconciled by a later pass

    def summary(self) -> str:
        if not self.configured:
            return "outbound SMS not configured: nothing sent"
        return ", ".join(f"{field.name.replace('_', ' ')} {getattr(self, field.name)}"
                         for field in fields(self) if field.name != "configured")


def expand(db: Database, *, now: datetime, limit: int = DEFAULT_LIMIT) -> Expansion:
    """Step 1 of either sender's pass: pending notifications into deliveries, for
    every channel."""
    return expand_pending(db, render_for, now=now, limit=limit)


def send_pending(db: Database, settings_or_gateway: Settings | Gateway | None, *,
                 now: datetime | None = None, limit: int = DEFAULT_LIMIT) -> SendReport:
    """One pass of the sender (expand, reconcile, send what is due); see the
    module docstring. ``now`` (tests) moves the sender's clock."""
    sender = (gateway(settings_or_gateway) if isinstance(settings_or_gateway, Settings)
              else settings_or_gateway)
    if sender is None:
        return SendReport(configured=False)
    now = _utc(now)
    report = SendReport()
    expansion = expand(db, now=now, limit=limit)
    report.expanded, report.queued = expansion.notifications, expansion.count(QUEUED, SMS)
    report.failed = expansion.count(FAILED, SMS)
    report.opted_out = expansion.count(OPTED_OUT, SMS)
    for claimed in stale_sending(db, now=now, older_than=RECONCILE_AFTER, channel=SMS):
        _reconcile(db, sender, claimed, now, report)
    for _ in range(limit):
        claimed, opted_out = claim_next(db, now=now, channel=SMS)
        report.opted_out += opted_out
        if claimed is None:
            break
        _send(db, sender, claimed, now, report)
    if report.sent or report.failed or report.retrying or report.uncertain:
        log.info("outbound SMS: %s", report.summary())
    return report


def _send(db: Database, sender: Gateway, claimed: Claimed, now: datetime,
          report: SendReport) -> None:
    options = {"status_callback": sender.status_callback} if sender.status_callback else {}
    try:
        message = sender.client.messages.create(to=claimed.to_phone, from_=sender.from_number,
                                                body=claimed.body, **options)
    except TwilioRestException as error:  # Twilio answered: no message was created
        _refused(db, claimed, error, now, report)
        return
    except Exception as error:  # noqa: BLE001 — whatever it is, the outcome must be settled
        if _never_left(error):
            log.warning("delivery %s: Twilio unreachable (%s); retried later", claimed.id,
                        type(error).__name__)
            report.retrying += record_retry(db, claimed, "connect_error", now=now) == QUEUED
            return
        log.warning("delivery %s: no answer from Twilio (%s); reconciled after %s",
                    claimed.id, type(error).__name__, RECONCILE_AFTER)
        report.uncertain += 1
        return
    try:
        report.sent += record_sent(db, claimed, message.sid, now=now,
                                   provider_status=_our_status(message.status))
    except Exception:
        log.exception("delivery %s: sent as %s but not recorded; reconciled later",
                      claimed.id, message.sid)
        report.uncertain += 1


def _refused(db: Database, claimed: Claimed, error: TwilioRestException, now: datetime,
             report: SendReport) -> None:
    code = str(error.code) if error.code else f"http_{error.status}"
    if code == OPTED_OUT_CODE:
        log.info("delivery %s: recipient unsubscribed (21610): user opted out", claimed.id)
        report.opted_out += record_recipient_opted_out(db, claimed, now=now)
    elif error.status == 401:  # our credentials, not the message: retry once fixed
        log.error("delivery %s: Twilio refused our credentials (%s): check TWILIO_ACCOUNT_SID "
                  "and TWILIO_AUTH_TOKEN; retried later", claimed.id, code)
        report.retrying += record_retry(db, claimed, code, now=now) == QUEUED
    elif error.status == 429 or error.status >= 500:
        log.warning("delivery %s: Twilio answered %s (%s); retried later", claimed.id,
                    error.status, code)
        report.retrying += record_retry(db, claimed, code, now=now) == QUEUED
    else:
        log.error("delivery %s: Twilio refused the message: %s %s", claimed.id, code, error.msg)
        report.failed += record_failed(db, claimed, code, now=now)


def _never_left(error: BaseException) -> bool:
    """Did the request certainly not reach Twilio (no connection was made)?"""
    if isinstance(error, requests.exceptions.ConnectTimeout):
        return True
    if isinstance(error, requests.exceptions.ConnectionError) and error.args:
        reason = getattr(error.args[0], "reason", error.args[0])
        return isinstance(reason, ConnectTimeoutError)  # refused, unresolvable, timed out
    return False


def _reconcile(db: Database, sender: Gateway, claimed: Claimed, now: datetime,
               report: SendReport) -> None:
    try:
        messages = sender.client.messages.list(to=claimed.to_phone, from_=sender.from_number,
                                               limit=RECONCILE_LIST_LIMIT)
    except Exception as error:  # noqa: BLE001 — try again at the next pass
        log.warning("delivery %s: cannot read Twilio's messages to reconcile it (%s)",
                    claimed.id, type(error).__name__)
        return
    known = _recorded_sids(db, [m.sid for m in messages])
    since = claimed.attempt_started_at - CLOCK_SKEW
    for message in messages:
        created = message.date_created
        if (message.sid not in known and (message.body or "").strip() == claimed.body.strip()
                and created is not None and as_utc(created) >= since):
            if record_sent(db, claimed, message.sid, now=now,
                           provider_status=_our_status(message.status), reconciled=True):
                log.info("delivery %s: found at Twilio as %s after a lost answer", claimed.id,
                         message.sid)
                report.sent += 1
                report.reconciled += 1
            return
    log.info("delivery %s: attempt %d never reached Twilio; queued again", claimed.id,
             claimed.attempt)
    report.retrying += record_retry(db, claimed, "not_received", now=now) == QUEUED


def _recorded_sids(db: Database, sids: list[str]) -> set[str]:
    if not sids:
        return set()
    with db.sessions() as session:
        return set(session.scalars(select(Delivery.provider_sid)
                                   .where(Delivery.provider_sid.in_(sids))))


def _our_status(provider_status: str | None) -> str:
    return PROVIDER_STATUSES.get(provider_status or "", SENT)


def _utc(now: datetime | None) -> datetime:
    return datetime.now(UTC) if now is None else as_utc(now).astimezone(UTC)


# --- status callbacks --------------------------------------------------------------------


def record_status(db: Database, form: dict[str, str], *, now: datetime | None = None) -> None:
    """Apply a Twilio message status callback (``MessageSid``, ``MessageStatus``,
    ``ErrorCode``). Unknown sids and malformed callbacks are logged and ignored:
    Twilio gets its 204 whatever we make of it."""
    sid = (form.get("MessageSid") or form.get("SmsSid") or "").strip()
    status = (form.get("MessageStatus") or form.get("SmsStatus") or "").strip().lower()
    error_code = (form.get("ErrorCode") or "").strip() or None
    if not SID_PATTERN.fullmatch(sid) or not status:
        log.warning("message status callback without a usable MessageSid/MessageStatus: ignored")
        return
    error_code = digits(error_code, 10)  # Twilio's are five digits
    new = record_provider_status(db, sid=sid, provider_status=status, error_code=error_code,
                                 now=_utc(now))
    if new is not None:
        log.info("message %s: %s%s", sid, new, f" (error {error_code})" if error_code else "")


# --- what `ivrs outbox` shows ------------------------------------------------------------


@dataclass(frozen=True)
class OutboxEntry:
    """One message of the outbox: a notification and one recipient on one channel
    (or none)."""

    notification: Notification
    user_code: str | None
    phone: str | None
    language: str | None
    text: str
    english: str | None  # the English text, when the recipient's differs
    status: str
    channel: str = SMS
    address: str | None = None  # the phone (SMS) or the e-mail address
    subject: str | None = None  # e-mail only


def outbox_entries(db: Database, study_id: int, *, include_sent: bool = False
                   ) -> list[OutboxEntry]:
    """The study's outbound messages, oldest first, one per recipient and channel:
    by default those waiting (notifications not yet handed to a sender, with
    each recipient as the audience resolves now, and deliveries queued or being
    sent, such as the e-mails of a deployment without SMTP_URL whose SMS
    sender expanded them); with ``include_sent`` every notification and every
    delivery. Changes nothing."""
    with db.sessions() as session:
        query = select(Notification).where(Notification.study_id == study_id)
        deliveries = _deliveries_by_notification(session, study_id, include_sent)
        if not include_sent:
            query = query.where((Notification.status == PENDING)
                                | Notification.id.in_(list(deliveries)))
        entries = []
        for notification in session.scalars(query.order_by(Notification.id)):
            if notification.id in deliveries:
                entries += [_entry(notification, user, delivery.channel,
                                   Rendered(delivery.body, delivery.subject), delivery.status,
                                   delivery.to_phone if delivery.channel == SMS
                                   else delivery.to_email)
                            for delivery, user in deliveries[notification.id]]
                continue
            status = notification.status
            # expanded without deliveries: the audience named nobody then
            users = ([] if status == EXPANDED
                     else audience_users(session, study_id, notification.audience))
            found = []
            for user in users:
                for channel in channels(user):
                    opted_out = channel == SMS and user.opted_out
                    if opted_out and not include_sent:
                        continue  # an opted-out user's SMS is not waiting: it never goes
                    found.append(_entry(notification, user, channel,
                                        render_for(notification, user, channel),
                                        OPTED_OUT if opted_out else status,
                                        user.phone if channel == SMS else user.email))
            entries += found
            if not found:
                entries.append(OutboxEntry(notification, None, None, None, "", None, status))
        return entries


def _deliveries_by_notification(session, study_id: int, include_sent: bool
                                ) -> dict[int, list[tuple[Delivery, User]]]:
    query = (select(Delivery, User).join(User, User.id == Delivery.user_id)
             .where(Delivery.study_id == study_id))
    if not include_sent:
        query = query.where(Delivery.status.in_(WAITING))
    found: dict[int, list[tuple[Delivery, User]]] = {}
    for delivery, user in session.execute(query.order_by(Delivery.id)):
        found.setdefault(delivery.notification_id, []).append((delivery, user))
    return found


def _entry(notification: Notification, user: User, channel: str, rendered: Rendered,
           status: str, address: str | None) -> OutboxEntry:
    english = None
    if user.language != SOURCE_LANGUAGE:
        english = _text(notification, SOURCE_LANGUAGE, channel)
        if english == rendered.body:
            english = None
    return OutboxEntry(notification, user.user_code, user.phone, user.language, rendered.body,
                       english, status, channel, address, rendered.subject)
