"""Hashes made under older argon2 parameters are replaced at the next sign-in.

A deployment that raises the cost of ``core.pins.HASHER`` (memory, time) cannot
rehash what is stored: only the secret itself can be hashed anew, and the
server holds it only while a sign-in checks it. So each sign-in that checked a
PIN (phone, SMS) or a web password right replaces a hash made under other
parameters, in the same transaction, with the user's row locked. One rule for
both secrets: this module; ``core.login`` and ``core.web_login`` call it.

A rehash is audited (``credential_rehashed``), but not as a credential change:
the secret is the same, the user changed nothing, a temporary PIN stays
temporary. It is on the record because the row's hash changes, and every change
to a user's row is on the record: an unexplained new hash in a backup's
comparison would look like tampering. The row never holds a hash or a secret.
"""

from __future__ import annotations

from core.models import User
from core.passwords import rehashed_password
from core.pins import rehashed
from core.service import ServiceCall

PIN, PASSWORD = "pin", "password"


def upgrade_hash(call: ServiceCall, user: User, credential: str, secret: str) -> bool:
    """After ``secret`` was checked right for ``user`` (its row locked): rehash it
    if its stored hash is out of date. Whether it did."""
    if credential == PIN:
        new_hash = rehashed(user.pin_hash, secret)
        if new_hash is not None:
            user.pin_hash = new_hash
    elif credential == PASSWORD:
        new_hash = rehashed_password(user.password_hash, secret)
        if new_hash is not None:
            user.password_hash = new_hash
    else:
        raise ValueError(f"no credential {credential!r}")
    if new_hash is None:
        return False
    call.audit.record("credential_rehashed", "user", user.user_code,
                      reason="hash parameters changed",
                      new={"credential": credential, "hash": "rehashed"})
    # Sealed now: a web sign-in that waits for its second factor finishes no
    # service call, and the new hash is committed all the same.
    call.audit.seal(call.session)
    return True
