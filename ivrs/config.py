"""The application's settings, from the environment (SPEC §2)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from core.db import database_url


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

    @classmethod
    def from_env(cls, *, dev: bool = False) -> Settings:
        return cls(database_url=database_url(),
                   redis_url=os.environ.get("REDIS_URL") or None,
                   twilio_auth_token=os.environ.get("TWILIO_AUTH_TOKEN") or None,
                   twilio_account_sid=os.environ.get("TWILIO_ACCOUNT_SID") or None,
                   twilio_from_number=os.environ.get("TWILIO_FROM_NUMBER") or None,
                   twilio_api_base_url=(os.environ.get("TWILIO_API_BASE_URL") or "")
                   .rstrip("/") or None,
                   public_base_url=(os.environ.get("PUBLIC_BASE_URL") or "").rstrip("/") or None,
                   skip_signatures=dev,
                   environment=os.environ.get("IVRS_ENV", "uat"))
