"""The webhook sender: the event stream to the subscribers' URLs (SPEC §10),
signed as the Standard Webhooks convention says (https://www.standardwebhooks.com).

``send_pending_webhooks`` is one pass: ``ivrs serve``'s background jobs run it
every second (``ivrs.outbound.scheduler.start_webhook_sender``), ``ivrs
webhooks send`` by hand. Nothing to configure: with nothing to send a pass is
one read (``core.event_deliveries.waiting``). One pass:

1. *Expand* pending events into deliveries (``core.event_deliveries``).
2. *Requeue* deliveries whose sender died in the middle of an attempt.
3. *Send* what is due, one delivery at a time, in each ordering key's order:
   claim it (its own committed transaction), POST it, record the outcome. A
   2xx is delivered; any other answer, a timeout or no connection is retried
   with backoff for 24 hours (``core.event_deliveries``). A receiver that has
   just failed is not tried again in the same pass: its other deliveries wait
   for the next one, and a receiver that is down costs one timeout per pass,
   not one per delivery.

The request: ``POST`` of the JSON body ``{"id": "evt_<n>", "type": ...,
"timestamp": ..., "data": {...}}`` with ``Content-Type: application/json``,
``webhook-id`` (the event's id: the same for every attempt and replay, so
that a receiver drops what it has), ``webhook-timestamp`` (this attempt's Unix
time) and ``webhook-signature``: ``v1,`` and the base64 of the HMAC-SHA256,
keyed with the subscription's secret (the bytes of its base64 after
``whsec_``), of ``<id>.<timestamp>.<body>``. Redirects are not followed (an
answer 3xx is a failure, retried), the answer's body is not read, and the
timeout is ``HTTP_TIMEOUT_SECONDS``.

Logs name deliveries, events, subscriptions and HTTP statuses; never a
payload, an URL's query or a secret. Timestamps are the real UTC clock, as
the other senders' (``IVRS_TODAY`` moves dates of the trial, not the wire's).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from datetime import UTC, datetime

import requests

from core.clock import as_utc
from core.db import Database
from core.event_deliveries import (
    FAILED,
    QUEUED,
    STALE_AFTER,
    ClaimedEvent,
    claim_next,
    expand_pending,
    record_delivered,
    record_retry,
    requeue_stale,
    waiting,
)
from core.webhook_subscriptions import SECRET_PREFIX

log = logging.getLogger("ivrs.webhooks")

HTTP_TIMEOUT_SECONDS = 10.0
DEFAULT_LIMIT = 500  # deliveries sent per pass
USER_AGENT = "ivrs-webhooks"


def signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header's value for one request."""
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def encode(body: dict) -> bytes:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"),
                      sort_keys=True).encode("utf-8")


def headers(claimed: ClaimedEvent, body: bytes, timestamp: int) -> dict[str, str]:
    return {"Content-Type": "application/json", "User-Agent": USER_AGENT,
            "webhook-id": claimed.webhook_id, "webhook-timestamp": str(timestamp),
            "webhook-signature": signature(claimed.secret, claimed.webhook_id, timestamp,
                                           body)}


@dataclass
class WebhookReport:
    expanded: int = 0  # events turned into deliveries
    requeued: int = 0  # deliveries whose sender died, back in the queue
    delivered: int = 0  # answered 2xx
    retrying: int = 0  # back in the queue after a failed attempt
    failed: int = 0  # given up after 24 hours

    def summary(self) -> str:
        return ", ".join(f"{f.name} {getattr(self, f.name)}" for f in fields(self))


def send_pending_webhooks(db: Database, *, now: datetime | None = None,
                          timeout: float = HTTP_TIMEOUT_SECONDS, limit: int = DEFAULT_LIMIT,
                          http: requests.Session | None = None) -> WebhookReport:
    """One pass of the sender (see the module docstring). ``now`` (tests) stops
    the queue's clock at that moment; without it each claim and outcome reads
    the clock anew, so that a long pass never stamps an attempt with a time
    another sender would take for a dead claim. The signature's timestamp is
    always the real time."""
    clock = _clock(now)
    report = WebhookReport()
    work = waiting(db, now=clock(), older_than=STALE_AFTER)
    if not work:
        return report
    if work.events:
        report.expanded = expand_pending(db, now=clock())
    if work.stale:
        stale = requeue_stale(db, now=clock(), older_than=STALE_AFTER)
        report.requeued, report.failed = stale.get(QUEUED, 0), stale.get(FAILED, 0)
    failing: set[int] = set()
    own = http is None
    http = http or requests.Session()
    try:
        for _ in range(limit):
            claimed = claim_next(db, now=clock(), skip_subscriptions=failing)
            if claimed is None:
                break
            if not _send(db, http, claimed, clock, timeout, report):
                failing.add(claimed.subscription_id)
    finally:
        if own:
            http.close()
    if report.delivered or report.retrying or report.failed or report.requeued:
        log.info("webhooks: %s", report.summary())
    return report


def _clock(now: datetime | None) -> Callable[[], datetime]:
    if now is None:
        return lambda: datetime.now(UTC)
    fixed = as_utc(now).astimezone(UTC)
    return lambda: fixed


def _send(db: Database, http: requests.Session, claimed: ClaimedEvent,
          clock: Callable[[], datetime], timeout: float, report: WebhookReport) -> bool:
    """POST one delivery and record its outcome; False when it failed."""
    body = encode(claimed.body)
    timestamp = int(time.time())
    try:
        answer = http.post(claimed.url, data=body, headers=headers(claimed, body, timestamp),
                           timeout=timeout, allow_redirects=False, stream=True)
        answer.close()  # the body is not read: a receiver's answer is its status
    except requests.Timeout:
        return _retry(db, claimed, clock(), report, error="timeout")
    except requests.ConnectionError:
        return _retry(db, claimed, clock(), report, error="connection_error")
    except requests.RequestException as error:
        return _retry(db, claimed, clock(), report, error=type(error).__name__[:100])
    if 200 <= answer.status_code < 300:
        report.delivered += record_delivered(db, claimed, answer.status_code, now=clock())
        return True
    return _retry(db, claimed, clock(), report, status=answer.status_code,
                  error=f"http_{answer.status_code}")


def _retry(db: Database, claimed: ClaimedEvent, now: datetime, report: WebhookReport, *,
           error: str, status: int | None = None) -> bool:
    log.warning("event delivery %s (%s to subscription %s), attempt %d: %s", claimed.id,
                claimed.webhook_id, claimed.subscription_id, claimed.attempt, error)
    outcome = record_retry(db, claimed, now=now, last_status=status, error=error)
    report.retrying += outcome == QUEUED
    report.failed += outcome == FAILED
    return False
