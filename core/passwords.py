"""Web console passwords: argon2id with the PINs' pepper, and what a password must be.

Hashing is the PINs' (``core.pins.hash_secret``): one pepper, one set of argon2
parameters, one place to raise them. A password is normalized (Unicode NFKC)
before it is hashed or measured, so that the same password typed on another
keyboard or system (composed or decomposed accents) is the same password.

The policy is NIST SP 800-63B §3.1.1.2 (rev. 4 §5.1.1.2): a length floor and
ceiling and a check against passwords known to be guessed first, and no
composition rules (no "one digit, one capital"), which make passwords harder
to remember without making them harder to guess. Refused: fewer than 12 or
more than 128 characters, the user ID (or only the user ID repeated), one to
four characters repeated, and a short list of the most common passwords.
"""

from __future__ import annotations

import unicodedata

from core.pins import check_secret, hash_secret, rehashed

MIN_LENGTH, MAX_LENGTH = 12, 128

# The most common passwords of 12 or more characters in public breach corpora
# (shorter ones fail the length rule anyway), compared case-insensitively. A
# short list on purpose: it stops the guesses an attacker tries first; the
# lockout after three failures stops the rest.
COMMON_PASSWORDS = frozenset({
    "123456789012", "1234567890123", "12345678901234", "123456789123", "1234567891011",
    "123123123123", "111111111111", "000000000000", "121212121212", "123412341234",
    "098765432112", "987654321098", "147258369123", "123456654321", "112233445566",
    "qwertyuiop12", "qwertyuiopas", "qwerty123456", "qwertyqwerty", "qwerty123456789",
    "1q2w3e4r5t6y", "1qaz2wsx3edc", "zaq12wsxcde3", "zaq1zaq1zaq1", "q1w2e3r4t5y6",
    "asdfghjkl123", "asdfasdfasdf", "zxcvbnm12345", "qazwsxedcrfv", "1q2w3e4r5t6y7u",
    "password1234", "password12345", "password123!", "passwordpassword", "password1!",
    "p@ssw0rd1234", "p@ssword1234", "passw0rd1234", "mypassword123", "123password!",
    "iloveyou1234", "iloveyou12345", "letmein12345", "welcome12345", "welcome123!",
    "changeme1234", "changeme123!", "administrator", "administrator1", "admin1234567",
    "admin123456789", "trustno11234", "football1234", "baseball1234", "sunshine1234",
    "princess1234", "monkey123456", "dragon123456", "superman1234", "starwars1234",
    "abc123456789", "abcdefghijkl", "abcd1234abcd", "abcdefg12345", "123456789abc",
    "1234qwerasdf", "qwer1234qwer", "test12345678", "testtesttest", "secret123456",
})


def normalized(password: str) -> str:
    return unicodedata.normalize("NFKC", password)


def hash_password(password: str) -> str:
    return hash_secret(normalized(password))


def check_password(password_hash: str | None, password: str) -> bool:
    """Whether ``password`` is the one hashed. Without a hash (an unknown user,
    no password set) it checks against a dummy hash and says False, in the time
    a wrong password takes: timing does not tell which of the two it was."""
    password = normalized(password or "")
    if not password_hash:
        check_secret(_dummy_hash(), password or "-")
        return False
    return check_secret(password_hash, password)


def rehashed_password(password_hash: str | None, password: str) -> str | None:
    """``core.pins.rehashed`` of a password (normalized as it was when hashed)."""
    return rehashed(password_hash, normalized(password or ""))


_DUMMY_HASH: str | None = None


def _dummy_hash() -> str:
    global _DUMMY_HASH
    if _DUMMY_HASH is None:
        _DUMMY_HASH = hash_secret("not a password anyone has")
    return _DUMMY_HASH


def password_problem(password: str, user_code: str) -> str | None:
    """What is wrong with ``password`` for this user, in English, or None.
    (Refusals carry the code ``weak_password``; the message never repeats the
    password.)"""
    password = normalized(password or "")
    if len(password) < MIN_LENGTH:
        return f"a password is at least {MIN_LENGTH} characters"
    if len(password) > MAX_LENGTH:
        return f"a password is at most {MAX_LENGTH} characters"
    folded = password.casefold()
    user_code = str(user_code or "").strip().casefold()
    if user_code and not folded.replace(user_code, ""):  # the ID, or the ID again and again
        return "a password must not be the user ID"
    if _repeats_a_short_unit(folded):
        return "a password must not be one character, or a few, repeated"
    if folded in COMMON_PASSWORDS:
        return "this password is one of the most common ones: choose another"
    return None


def _repeats_a_short_unit(text: str, longest: int = 4) -> bool:
    """Whether ``text`` is one to ``longest`` characters said again and again
    ("aaaaaaaaaaaa", "abababababab", "123412341234"): NIST's "repetitive
    characters", which no list of common passwords could hold."""
    return any(len(text) % size == 0 and text == text[:size] * (len(text) // size)
               for size in range(1, longest + 1))
