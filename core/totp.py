"""TOTP codes (RFC 6238, what authenticator apps make): secrets, provisioning
URIs, and which time step a typed code belongs to.

A code is accepted for the current 30-second step or one either side of it
(a phone's clock a little off, a code typed as it changes), and only for a
step later than the last one accepted for the user: a code used once, or an
older one, is a replay.

The time is the wall clock, not ``core.clock.utcnow``: ``IVRS_TODAY`` moves the
date a UAT system takes as today, but the authenticator on the tester's phone
keeps the real date, and its codes would never match. Tests move ``wall_clock``.
"""

from __future__ import annotations

import re
import time

import pyotp
from pyotp.utils import strings_equal

DIGITS = 6
INTERVAL = 30  # seconds per step: every authenticator app's default
_SECRET = re.compile(r"[A-Z2-7]{16,64}")  # base32, 80 to 320 bits
_CODE = re.compile(rf"[0-9]{{{DIGITS}}}")


def wall_clock() -> float:
    return time.time()


def new_secret() -> str:
    return pyotp.random_base32()  # 32 characters: 160 bits, RFC 4226's recommendation


def is_valid_secret(secret: object) -> bool:
    return isinstance(secret, str) and bool(_SECRET.fullmatch(secret))


def provisioning_uri(secret: str, *, account: str, issuer: str) -> str:
    """The ``otpauth://`` URI an authenticator app reads from a QR code."""
    return pyotp.TOTP(secret, digits=DIGITS, interval=INTERVAL).provisioning_uri(
        name=account, issuer_name=issuer)


def current_step(at: float | None = None) -> int:
    return int((wall_clock() if at is None else at) // INTERVAL)


def matching_step(secret: str, code: object, *, after: int | None) -> int | None:
    """The time step whose code ``code`` is, within one step of now and later
    than ``after`` (the last step accepted); None when it is not (wrong,
    malformed, or a replay)."""
    if not isinstance(code, str):
        return None
    code = re.sub(r"[\s-]", "", code)  # "123 456" as some apps show it
    if not _CODE.fullmatch(code):
        return None
    totp = pyotp.TOTP(secret, digits=DIGITS, interval=INTERVAL)
    now = current_step()
    for step in (now - 1, now, now + 1):
        if after is not None and step <= after:
            continue
        if strings_equal(code, totp.generate_otp(step)):
            return step
    return None
