"""PIN hashing: argon2id at OWASP's floor, with a server-side pepper.

Why these parameters: a 4-8 digit PIN has at most 10^8 values, so no hash cost
makes a stolen hash safe on its own; what protects it is the pepper (an HMAC
key from ``IVRS_PIN_PEPPER`` that lives outside the database) plus lockout
after three failures online. The argon2 cost only needs to make offline
guessing without the pepper pointless and must stay affordable when 50 callers
log in at once: m=19 MiB, t=2, p=1 (OWASP's minimum for argon2id) costs about
17 ms and 19 MiB per check on a 2-core machine, against 116 ms and 64 MiB for
argon2-cffi's defaults. Parameters are stored in each hash, so raising them
later rehashes each PIN and password at its next successful sign-in
(``rehashed``, applied by ``core.rehash``).

Web passwords (``core.passwords``) are hashed the same way, with the same
pepper: ``hash_secret`` and ``check_secret`` are what both share.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from core.fields import is_digits

log = logging.getLogger(__name__)

HASHER = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1, hash_len=32,
                        salt_len=16, type=Type.ID)
# Only for demos and tests: a deployment in production must set its own pepper.
DEVELOPMENT_PEPPER = "ivrs-development-pepper-not-secret"
MIN_LENGTH, MAX_LENGTH = 4, 8


class PepperMissing(RuntimeError):
    pass


def _pepper() -> bytes:
    pepper = os.environ.get("IVRS_PIN_PEPPER")
    if pepper:
        return pepper.encode("utf-8")
    if os.environ.get("IVRS_ENV") == "production":
        raise PepperMissing("IVRS_PIN_PEPPER must be set in production")
    return DEVELOPMENT_PEPPER.encode("utf-8")


def _peppered(secret: str) -> str:
    mac = hmac.new(_pepper(), secret.encode("utf-8"), hashlib.sha256).digest()
    return base64.b64encode(mac).decode("ascii")


def hash_secret(secret: str) -> str:
    """A PIN's or a password's hash: the pepper's HMAC of it, hashed by argon2id.
    The HMAC also gives argon2 a fixed-length input, however long a password is."""
    return HASHER.hash(_peppered(secret))


def check_secret(secret_hash: str | None, secret: str) -> bool:
    if not secret_hash or not secret:
        return False
    try:
        return HASHER.verify(secret_hash, _peppered(secret))
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def is_valid_pin(pin: str) -> bool:
    return is_digits(pin, MAX_LENGTH) and MIN_LENGTH <= len(pin)


def hash_pin(pin: str) -> str:
    if not is_valid_pin(pin):
        raise ValueError(f"a PIN is {MIN_LENGTH} to {MAX_LENGTH} digits")
    return hash_secret(pin)


def check_pin(pin_hash: str | None, pin: str) -> bool:
    return check_secret(pin_hash, pin)


def needs_rehash(secret_hash: str) -> bool:
    """Whether a hash was made under other argon2 parameters than ``HASHER``'s."""
    try:
        return HASHER.check_needs_rehash(secret_hash)
    except (InvalidHashError, ValueError):  # not an argon2 hash: nothing to upgrade
        return False


def rehashed(secret_hash: str | None, secret: str) -> str | None:
    """``secret`` hashed anew when ``secret_hash``, just checked right against it,
    was made under older parameters (a deployment raised ``HASHER``'s); else None.
    Only a right secret can be rehashed: the hash alone cannot be upgraded."""
    if not secret_hash or not secret or not needs_rehash(secret_hash):
        return None
    return hash_secret(secret)
