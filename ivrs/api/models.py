"""The API's request and answer models: they validate what comes in, shape what
goes out, and are the schemas of the OpenAPI document (``ivrs.api.registry``).

Requests are strict (a number is not a string, ``"yes"`` is not true) and
refuse unknown fields, so that a typo in an EDC's mapping is an error, not an
ignored answer. Answers carry the unblinded fields (``arm``, ``kit_type``,
``lot``) as optional members that the handlers fill only for unblinded
clients; a blinded client's answer does not have them at all.
"""

from __future__ import annotations

import datetime as dt
from datetime import date, datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from core.clock import as_utc

Code = Annotated[str, StringConstraints(min_length=1, max_length=40,
                                        pattern=r"^[A-Za-z0-9_.=-]+$")]
Digits = Annotated[str, StringConstraints(pattern=r"^[0-9]{1,20}$")]
Text = Annotated[str, StringConstraints(min_length=1, max_length=500)]
Short = Annotated[str, StringConstraints(min_length=1, max_length=100)]
# A moment in UTC with its offset (SQLite gives naive UTC back).
Moment = Annotated[datetime, AfterValidator(as_utc)]


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class Query(BaseModel):
    # Query strings are text: numbers in them are converted, not refused.
    model_config = ConfigDict(extra="forbid")


class Answer(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- study and sites -----------------------------------------------------------------------


class FactorOut(Answer):
    code: str
    levels: list[str]


class VisitOut(Answer):
    code: str
    day: int
    window: list[int] = Field(description="days before (<= 0) and after (>= 0) the day")
    kits: int


class StudyOut(Answer):
    code: str
    name: str
    languages: list[str]
    eligibility: list[str]
    eligibility_source: str = Field(description="ivrs: the phone asks; edc: the API records")
    factors: list[FactorOut]
    visits: list[VisitOut]
    unblinding_mode: str
    arms: list[str] | None = Field(None, description="unblinded clients only")


class SiteOut(Answer):
    code: str
    name: str
    country: str
    language: str
    timezone: str
    depot: str | None = None
    active: bool


class SitesOut(Answer):
    sites: list[SiteOut]


# --- subjects ------------------------------------------------------------------------------


class SubjectsQuery(Query):
    site: Code | None = None
    status: Literal["screened", "screen_failed", "randomized", "discontinued"] | None = None
    after: Digits | None = Field(None, description="the last subject number of the page before")
    limit: int = Field(100, ge=1, le=500)


class SubjectLineOut(Answer):
    subject_number: str
    site: str
    status: str
    screened_at: Moment
    randomization_number: str | None = None
    randomized_at: Moment | None = None
    arm: str | None = Field(None, description="unblinded clients only")


class SubjectsOut(Answer):
    subjects: list[SubjectLineOut]
    next_after: str | None = Field(None, description="pass as `after` for the next page")


class ScreenIn(Request):
    site: Code


class SubjectOut(Answer):
    subject_number: str
    site: str
    status: str
    confirmation: str | None = None


class StatusEntryOut(Answer):
    from_status: str | None = None
    to_status: str
    at: Moment
    by: str | None = None
    reason: str | None = None


class RandomizationOut(Answer):
    event: str
    randomization_number: str
    randomized_at: Moment
    arm: str | None = Field(None, description="unblinded clients only")


class ScheduledVisitOut(Answer):
    code: str
    due_on: date
    window_start: date
    window_end: date
    status: Literal["done", "missed", "due", "upcoming"]
    occurred_on: date | None = None


class KitOut(Answer):
    kit_number: str
    visit: str | None = None
    status: str
    assigned_at: Moment | None = None
    confirmed_at: Moment | None = None
    kit_type: str | None = Field(None, description="unblinded clients only")
    lot: str | None = Field(None, description="unblinded clients only")


class EligibilityOut(Answer):
    subject_number: str
    answers: dict[str, bool]
    missing: list[str]
    failed: list[str]
    all_met: bool
    confirmation: str | None = None


class SubjectDetailOut(Answer):
    subject_number: str
    site: str
    status: str
    history: list[StatusEntryOut]
    randomizations: list[RandomizationOut]
    visits: list[ScheduledVisitOut]
    kits: list[KitOut]
    eligibility: EligibilityOut | None = Field(
        None, description="with eligibility recorded by the EDC")


class EligibilityIn(Request):
    answers: dict[Code, bool] = Field(description="criterion -> met", min_length=1,
                                      max_length=100)


class RandomizeIn(Request):
    factors: dict[Code, Code] = Field(default_factory=dict, max_length=50)
    eligibility: dict[Code, bool] | None = Field(
        None, max_length=100, description="criterion -> met; recorded first when the "
        "study's eligibility comes from the EDC, else every criterion is required here")
    event: Code | None = Field(None, description="the randomization event; default the next")


class RandomizedOut(Answer):
    subject_number: str
    event: str
    randomization_number: str
    kits: list[str]
    visit: str | None = None
    confirmation: str | None = None
    arm: str | None = Field(None, description="unblinded clients only")


class DispenseIn(Request):
    visit: Code | None = Field(None, description="the visit the caller expects to be due")


class DispensedOut(Answer):
    subject_number: str
    visit: str
    kits: list[str]
    out_of_window: bool
    missed: list[str]
    confirmation: str | None = None


class StatusIn(Request):
    status: Literal["screen_failed", "discontinued"]
    reason: Text


class KitConfirmIn(Request):
    subject: Digits


class KitConfirmedOut(Answer):
    kit: str
    subject_number: str
    visit: str
    confirmed_at: Moment
    remaining: list[str]
    confirmation: str | None = None


# --- inventory and shipments ---------------------------------------------------------------


class InventoryQuery(Query):
    site: Code | None = None


class SiteStockOut(Answer):
    site: str
    available: int
    quarantined: int
    incoming: int


class InventoryOut(Answer):
    sites: list[SiteStockOut]


class ShipmentsQuery(Query):
    site: Code | None = None
    status: Code | None = None
    after: Digits | None = None
    limit: int = Field(100, ge=1, le=500)


class ShipmentLineOut(Answer):
    shipment_number: str
    origin: str
    destination: str
    status: str
    kits: int
    reason: str
    carrier: str | None = None
    tracking_number: str | None = None
    created_at: Moment
    dispatched_on: date | None = None
    received_at: Moment | None = None


class ShipmentsOut(Answer):
    shipments: list[ShipmentLineOut]
    next_after: str | None = None


class DispatchIn(Request):
    carrier: Short
    tracking_number: Short
    date: dt.date | None = Field(None, description="the day it left; default today")


class ShipmentOut(Answer):
    shipment_number: str
    site: str
    depot: str
    status: str
    kits: int
    confirmation: str | None = None


class ReceiveIn(Request):
    damaged: list[Digits] = Field(default_factory=list, max_length=1000)
    missing: list[Digits] = Field(default_factory=list, max_length=1000)
    temperature_excursion: bool = False


class ReceivedOut(Answer):
    shipment_number: str
    site: str
    received: int
    damaged: int
    missing: int
    quarantined: int
    confirmation: str | None = None


# --- approvals, unblinding, reports, audit -------------------------------------------------


class Signature(Request):
    """An electronic signature: the signer's own user ID and PIN, as by phone."""

    user: Digits
    pin: Annotated[str, StringConstraints(pattern=r"^[0-9]{4,8}$")]


class ApprovalsQuery(Query):
    status: Literal["pending", "approved", "rejected", "expired"] | None = "pending"


class ApprovalOut(Answer):
    number: str
    kind: str
    site: str | None = None
    status: str
    about: str
    requested_by: str
    requested_at: Moment
    expires_at: Moment
    decided_by: str | None = None
    decided_at: Moment | None = None
    reason: str | None = None


class ApprovalsOut(Answer):
    approvals: list[ApprovalOut]


class DecisionIn(Request):
    decision: Literal["approve", "reject"]
    reason: Text | None = None
    signature: Signature


class DecisionOut(Answer):
    number: str
    kind: str
    status: str
    confirmation: str | None = None


class UnblindIn(Request):
    reason: Literal["medical_emergency", "other"]  # core.unblinding.REASONS
    signature: Signature


class RevealedOut(Answer):
    event: str
    arm: str


class UnblindingOut(Answer):
    number: str
    subject_number: str
    status: Literal["unblinded", "pending"]
    arms: list[RevealedOut] = Field(default_factory=list,
                                    description="only to the signing investigator, unblinded")
    confirmation: str | None = None


class ReportQuery(Query):
    format: Literal["csv", "xlsx", "pdf"] = "csv"
    site: Code | None = None
    start: date | None = None
    end: date | None = None


class AuditOut(Answer):
    intact: bool
    problem: str | None = None
