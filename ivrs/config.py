"""The application's settings, from the environment (SPEC §2).

A setting that is there but cannot be used (an ``SMTP_URL`` that is not one)
raises ``ConfigError`` when the settings are read, so that a command or a
server refuses to start with one clear message rather than fail later, message
by message (``ivrs.main`` turns it into ``error: ...`` and exit status 2).
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote, urlsplit

from core.db import database_url
from core.fields import email_problem


class ConfigError(ValueError):
    """A setting from the environment that cannot be used."""


@dataclass(frozen=True)
class SmtpSettings:
    """Outbound e-mail (ivrs.outbound.email), from ``SMTP_URL`` and ``SMTP_FROM``.

    ``security``: ``plain`` (``smtp://``), ``starttls`` (``smtp://...?starttls=true``:
    the connection is upgraded before anything else is said) or ``tls``
    (``smtps://``: implicit TLS from the first byte).
    """

    host: str
    port: int
    security: str
    from_address: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)


SMTP_SCHEMES = {"smtp": 25, "smtps": 465}
STARTTLS_PORT = 587
_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}


def parse_smtp_url(url: str, from_address: str | None = None, *,
                   environment: str = "uat") -> SmtpSettings:
    """``smtp://[user[:password]@]host[:port][?starttls=true]`` or
    ``smtps://[user[:password]@]host[:port]``; the user and password are
    percent-decoded (``%40`` for an ``@`` in a user name). Default ports: 25,
    587 with STARTTLS, 465 for smtps. The From address is ``from_address``
    (``SMTP_FROM``), else the user name when it is an e-mail address.

    Raises ``ConfigError`` saying what is wrong; the message never repeats the
    password.
    """
    def refuse(problem: str) -> ConfigError:
        return ConfigError(f"SMTP_URL is not usable: {problem} (expected "
                           "smtp://[user[:password]@]host[:port][?starttls=true] or "
                           "smtps://[user[:password]@]host[:port])")

    text = (url or "").strip()
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise refuse("its port is not a number from 1 to 65535") from None
    scheme = parts.scheme.lower()
    if scheme not in SMTP_SCHEMES:
        raise refuse(f"the scheme must be smtp or smtps, not {parts.scheme or 'none'!r}")
    host = parts.hostname
    if not host:
        raise refuse("it names no host")
    if parts.path not in ("", "/") or parts.fragment:
        raise refuse("it has a path or a fragment; only a query ?starttls=true may follow "
                     "the host")
    try:
        query = parse_qs(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError:
        raise refuse("its query is not name=value pairs") from None
    unknown = sorted(set(query) - {"starttls"})
    if unknown:
        raise refuse(f"unknown parameter {unknown[0]!r}; the only one is starttls")
    starttls = False
    if "starttls" in query:
        (value,) = query["starttls"][-1:]
        if value.lower() not in _TRUE | _FALSE:
            raise refuse(f"starttls={value!r} is neither true nor false")
        starttls = value.lower() in _TRUE
        if starttls and scheme == "smtps":
            raise refuse("smtps is TLS from the start: starttls=true does not apply")
    security = "tls" if scheme == "smtps" else "starttls" if starttls else "plain"
    if port is None:
        port = STARTTLS_PORT if security == "starttls" else SMTP_SCHEMES[scheme]
    if port == 0:
        raise refuse("its port is not a number from 1 to 65535")
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    if password is not None and not username:
        raise refuse("it has a password without a user name")
    if password and security == "plain" and environment == "production" \
            and not _is_loopback(host):
        raise refuse("a password would travel unencrypted: use smtps:// or ?starttls=true "
                     "(refused when IVRS_ENV is production)")
    sender = (from_address or "").strip() or None
    if sender is None:
        if username and email_problem(username) is None:
            sender = username
        else:
            raise ConfigError("SMTP_FROM is needed with SMTP_URL: the address e-mails come "
                              "from (the SMTP user name is used when it is an e-mail address)")
    problem = email_problem(sender)
    if problem is not None:
        raise ConfigError(f"SMTP_FROM {sender!r} is not an e-mail address: {problem}")
    return SmtpSettings(host=host, port=port, security=security, from_address=sender,
                        username=username, password=password)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Settings:
    database_url: str
    redis_url: str | None = None
    twilio_auth_token: str | None = None
    # Outbound SMS (ivrs.outbound.notify): without the account and the number, nothing is
    # sent and the messages stay in the outbox.
    twilio_account_sid: str | None = None
    twilio_from_number: str | None = None
    # Where the Twilio REST client sends its requests instead of
    # https://api.twilio.com: for test doubles and UAT sandboxes only.
    twilio_api_base_url: str | None = None
    public_base_url: str | None = None
    skip_signatures: bool = False  # --dev only: loudly announced
    environment: str = "uat"
    # Outbound e-mail (ivrs.outbound.email): without SMTP_URL nothing is sent and the
    # e-mails stay in the outbox.
    smtp: SmtpSettings | None = None

    @classmethod
    def from_env(cls, *, dev: bool = False) -> Settings:
        environment = os.environ.get("IVRS_ENV", "uat")
        smtp_url = (os.environ.get("SMTP_URL") or "").strip()
        return cls(database_url=database_url(),
                   redis_url=os.environ.get("REDIS_URL") or None,
                   twilio_auth_token=os.environ.get("TWILIO_AUTH_TOKEN") or None,
                   twilio_account_sid=os.environ.get("TWILIO_ACCOUNT_SID") or None,
                   twilio_from_number=os.environ.get("TWILIO_FROM_NUMBER") or None,
                   twilio_api_base_url=(os.environ.get("TWILIO_API_BASE_URL") or "")
                   .rstrip("/") or None,
                   public_base_url=(os.environ.get("PUBLIC_BASE_URL") or "").rstrip("/") or None,
                   skip_signatures=dev,
                   environment=environment,
                   smtp=parse_smtp_url(smtp_url, os.environ.get("SMTP_FROM"),
                                       environment=environment) if smtp_url else None)
