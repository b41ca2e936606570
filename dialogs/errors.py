"""Core refusals -> message ids, for every channel.

A refusal's code names its message (``error.<code>``); a code without a message
of its own gets the generic refusal, which still names nothing it should not.
The texts say what went wrong for a site user, never an arm or a kit type.
"""

from __future__ import annotations

# Core error codes whose own prompt exists; anything else gets a generic refusal
# that still names nothing it should not.
KNOWN_ERRORS = frozenset({
    "unknown_subject", "wrong_site", "not_allowed", "already_randomized",
    "subject_screened", "subject_screen_failed", "subject_randomized", "subject_discontinued",
    "subject_not_randomized", "not_eligible", "eligibility_incomplete", "list_exhausted",
    "cap_reached",
    "no_stock_at_site", "no_stock", "no_visit_due", "kit_not_assigned", "unknown_shipment",
    "shipment_not_due", "kit_not_in_shipment", "site_full", "unknown_site", "bad_pin",
    "pin_unchanged", "locked", "previous_event_missing", "no_randomization", "no_kit_type",
    "key_reused", "bad_state", "shipment_received",
    # signatures and the approvals gate
    "signature_expired", "pin_temporary", "unknown_request", "own_request",
    "approval_approved", "approval_rejected", "approval_expired", "unblinding_pending",
})
# Codes that say the same thing to a site user as another code's message.
ALIASES = {"shipment_requested": "shipment_not_due", "shipment_cancelled": "shipment_not_due"}


def error_prompt(code: str) -> str:
    code = ALIASES.get(code, code)
    return f"error.{code}" if code in KNOWN_ERRORS else "error.refused"
