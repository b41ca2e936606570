"""What the supply pages' forms share: the idempotency key each form carries, a
core refusal in the reader's words with its HTTP status, kit numbers typed in a
box, and the temperature logger file of a receipt.

None of this is a trial rule: the services decide; this only turns a form into
their arguments and their refusals into a page.
"""

from __future__ import annotations

import re
import uuid

from flask import request
from werkzeug.datastructures import FileStorage

from core.errors import IvrsError, NotFound, Refused
from ivrs.web.base import refusal_text, user, words

# The upload limit of a receipt (the whole request: the logger file and the form's
# fields). Only the receipt takes a file; every other page keeps Flask's default.
# The core keeps at most 1,000,000 characters of logger data (core.supply.receipt),
# so a bigger file could never be kept anyway.
RECEIPT_MAX_BODY = 1024 * 1024 + 64 * 1024
LOGGER_MAX_BYTES = 1024 * 1024
UPLOAD_LIMITS = {"web.shipment_receive": RECEIPT_MAX_BODY}

_FORM_KEY = re.compile(r"^[0-9a-f]{32}$")
_KIT_SEPARATORS = re.compile(r"[\s,;]+")


def limit_uploads() -> None:
    """Installed on the application before the CSRF check (which reads the form):
    a receipt's body larger than its limit is refused (413) before it is read."""
    limit = UPLOAD_LIMITS.get(request.endpoint or "")
    if limit is not None:
        request.max_content_length = limit


def new_form_key() -> str:
    """Drawn into every data-changing form: a double submit or a reload acts once."""
    return uuid.uuid4().hex


def service_key() -> str | None:
    """The form's key for the service, scoped to the signed-in user, so that a key
    copied from another user's form can never replay that user's answer."""
    given = request.form.get("idempotency_key", "")
    return f"web:{user().user_code}:{given}" if _FORM_KEY.match(given) else None


# Refusals about who asks (403), the state of things (409) or what was typed (422).
_FORBIDDEN = frozenset({"not_allowed", "wrong_site"})
_BAD_INPUT = frozenset({"bad_date", "missing_field", "too_long", "kit_not_in_shipment",
                        "damaged_and_missing", "bad_kit_number", "logger_data",
                        "bad_quantity", "bad_request", "bad_file"})
# The supply refusals in words written for these pages (the rest: the phone's).
_WORDS = {
    "bad_date": "web.supply.error.bad_date",
    "missing_field": "web.supply.error.missing_field",
    "too_long": "web.supply.error.too_long",
    "kit_not_in_shipment": "web.supply.error.kit_not_in_shipment",
    "damaged_and_missing": "web.supply.error.damaged_and_missing",
    "bad_kit_number": "web.supply.error.bad_kit_number",
    "logger_data": "web.supply.error.logger_data",
    "nothing_quarantined": "web.supply.error.nothing_quarantined",
    "kit_move_not_allowed": "web.supply.error.kit_move_not_allowed",
    "shipment_requested": "web.supply.error.shipment_requested",
    "shipment_dispatched": "web.supply.error.shipment_dispatched",
    "shipment_received": "web.supply.error.shipment_received",
    "shipment_cancelled": "web.supply.error.shipment_cancelled",
    "depot_short": "web.supply.error.depot_short",
    "bad_quantity": "web.supply.error.bad_quantity",
    "no_depot": "web.supply.error.no_depot",
}


def refusal_status(error: IvrsError) -> int:
    if error.code in _FORBIDDEN:
        return 403
    if isinstance(error, NotFound) or error.code.startswith("unknown_"):
        return 404
    if error.code in _BAD_INPUT or not isinstance(error, Refused):
        return 422
    return 409


def supply_refusal(error: IvrsError) -> str:
    """A refusal in the reader's words. Only kit numbers go into the text: they
    are what the reader typed or ticked, and say nothing of a kit's type."""
    if error.code == "too_long" and "field" not in error.params:
        return words("web.supply.error.logger_too_long")  # the logger data, not a field
    message_id = _WORDS.get(error.code)
    if message_id is None:
        return refusal_text(error)
    kits = error.params.get("kits") or [error.params.get("kit")]
    listed = [str(kit) for kit in kits if kit]
    return words(message_id, kits=", ".join(listed[:5]) + (" …" if len(listed) > 5 else ""))


def kit_numbers(field: str) -> list[str]:
    """Kit numbers ticked (``field``) and typed in the box beside (``field_text``),
    separated by spaces, commas or new lines as the SMS ``RECV ... DAMAGED ...``
    takes them. Their checking is the service's."""
    ticked = request.form.getlist(field)
    typed = _KIT_SEPARATORS.split(request.form.get(f"{field}_text", ""))
    return sorted({number.strip() for number in (*ticked, *typed) if number.strip()})


class BadFile(Exception):
    """A logger file the core could not keep: ``message_id`` says why."""

    def __init__(self, message_id: str):
        super().__init__(message_id)
        self.message_id = message_id


def logger_text(upload: FileStorage | None) -> str | None:
    """The logger file as text, which the core keeps as given: a JSON object as
    such, any other text (a logger's CSV export, say) as text. None: no file."""
    if upload is None or not upload.filename:
        return None
    data = upload.stream.read(LOGGER_MAX_BYTES + 1)
    if len(data) > LOGGER_MAX_BYTES:
        raise BadFile("web.supply.error.file_too_large")
    if not data.strip():
        raise BadFile("web.supply.error.file_empty")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise BadFile("web.supply.error.file_not_text") from None
    # A NUL is no character of a text file, and PostgreSQL cannot keep one.
    if "\x00" in text:
        raise BadFile("web.supply.error.file_not_text")
    return text
