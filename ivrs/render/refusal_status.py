"""The HTTP status of a core refusal, for every HTTP door (the API's problem
details, the web console's pages): chosen from the kind of error only, the
``code`` staying the core's. Bad input 422, a role, a site or a signer 403, an
unknown thing 404, the state of the trial 409."""

from __future__ import annotations

from core.errors import IvrsError, NotFound, Refused

# Refusals that are about who asks, not what state things are in.
FORBIDDEN_CODES = frozenset({"not_allowed", "wrong_site", "signature_required", "blinded_role",
                             "bad_credentials", "locked", "pin_temporary"})
CONFLICT_CODES = frozenset({"key_reused"})


def status_for(error: IvrsError) -> int:
    if error.code in FORBIDDEN_CODES:
        return 403
    if isinstance(error, NotFound) or error.code.startswith("unknown_"):
        return 404
    if isinstance(error, Refused) or error.code in CONFLICT_CODES:
        return 409
    return 422
