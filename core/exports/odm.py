"""A CDISC ODM 1.3.2 snapshot of the study's randomization and dispensing data,
for import into an EDC (``ivrs export odm``).

The file holds, in this order (the ODM schema's):

- ``Study``: ``GlobalVariables`` and one ``MetaDataVersion`` (OID after the
  study's configuration version) defining what the clinical data uses:
  StudyEventDefs ``SE.SCREENING``, ``SE.RAND.<event>`` per randomization event,
  ``SE.VISIT.<visit>`` per visit (``core.exports.visit_catalogue``) and
  ``SE.STATUS`` (type Common: the subject's status and its history), their
  FormDefs, ItemGroupDefs, ItemDefs and CodeLists;
- ``AdminData``: one ``Location`` per site, which each subject's ``SiteRef``
  names;
- ``ClinicalData``: one ``SubjectData`` per subject (``SubjectKey`` = subject
  number), its events, forms, item groups and items. An item without a value
  (a kit not yet confirmed) is left out rather than sent empty.

Times are UTC (``2026-11-23T09:15:02Z``); dates (the visit's day) are the
system's dates, as in the reports. Blinded by default: nothing names an arm, a
kit type or a lot, in the data or in the metadata. ``blinded=False`` adds the
item ``IT.ARM`` (with the code list of the arms) to each randomization, under
a MetaDataVersion of its own OID.

The XML is streamed: the metadata first, then subjects read in batches of
``BATCH`` with their randomizations, kits, visits and status history, each
subject written as soon as it is complete.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime
from importlib.metadata import PackageNotFoundError, version
from typing import IO, Iterator
from xml.sax.saxutils import XMLGenerator

from sqlalchemy import null, select
from sqlalchemy.orm import Session
from sqlalchemy.sql import Select

from core.clock import utcnow
from core.exports import BATCH, VisitDef, visit_catalogue
from core.models import Randomization, Site, Study, Subject, SubjectStatusChange
from core.reports import _utc  # one UTC format for every output
from core.subjects import DISCONTINUED, RANDOMIZED, SCREEN_FAILED, SCREENED
from core.supply import lifecycle
from core.models import Kit, SubjectVisit
from core.supply.visits import DONE, MISSED

NAMESPACE = "http://www.cdisc.org/ns/odm/v1.3"
ODM_VERSION = "1.3.2"

# The fixed part of the metadata: event, form, group and item OIDs.
SE_SCREENING, SE_STATUS = "SE.SCREENING", "SE.STATUS"
F_SCREENING, F_VISIT, F_STATUS = "F.SCREENING", "F.VISIT", "F.STATUS"
IG_SCREENING, IG_VISIT, IG_KIT = "IG.SCREENING", "IG.VISIT", "IG.KIT"
IG_STATUS, IG_STATUS_CHANGE = "IG.STATUS", "IG.STATUS_CHANGE"
IT_SCREENED_AT, IT_STATUS, IT_UNBLINDED_AT = "IT.SCRDT", "IT.STATUS", "IT.UNBLDT"
IT_CHANGED_AT, IT_FROM, IT_TO, IT_REASON = "IT.STCHGDT", "IT.STFROM", "IT.STTO", "IT.STRSN"
IT_RAND_NUMBER, IT_RANDOMIZED_AT, IT_STRATUM = "IT.RANDNO", "IT.RANDDT", "IT.STRATUM"
IT_ARM = "IT.ARM"
IT_VISIT_STATUS, IT_VISIT_DATE, IT_DUE_DATE, IT_OUT_OF_WINDOW = (
    "IT.VISSTAT", "IT.VISDT", "IT.VISDUE", "IT.VISOOW")
IT_KIT_NUMBER, IT_DISPENSED_AT, IT_CONFIRMED_AT, IT_KIT_STATUS = (
    "IT.KITNO", "IT.DISPDT", "IT.CONFDT", "IT.KITSTAT")
CL_SUBJECT_STATUS, CL_VISIT_STATUS, CL_KIT_STATUS, CL_ARM = (
    "CL.SUBJSTAT", "CL.VISSTAT", "CL.KITSTAT", "CL.ARM")

# Where a kit given to a subject can be; the others are stock statuses.
SUBJECT_KIT_STATUSES = (lifecycle.ASSIGNED, lifecycle.DISPENSED, lifecycle.RETURNED_BY_SUBJECT,
                        lifecycle.DAMAGED, lifecycle.MISSING, lifecycle.RETURNED_TO_DEPOT,
                        lifecycle.DESTROYED)


# --- metadata as data -----------------------------------------------------------------------


@dataclass(frozen=True)
class _Item:
    oid: str
    name: str
    data_type: str
    description: str
    length: int | None = None
    sas_name: str | None = None
    codelist: str | None = None


@dataclass(frozen=True)
class _Group:
    oid: str
    name: str
    repeating: bool
    items: tuple[str, ...]
    mandatory: frozenset[str] = frozenset()  # item OIDs every occurrence has


@dataclass(frozen=True)
class _Form:
    oid: str
    name: str
    groups: tuple[tuple[str, bool], ...]  # (item group OID, mandatory)


@dataclass(frozen=True)
class _Event:
    oid: str
    name: str
    kind: str  # Scheduled | Common
    forms: tuple[str, ...]
    mandatory: bool


@dataclass(frozen=True)
class _CodeList:
    oid: str
    name: str
    terms: tuple[tuple[str, str], ...]  # (coded value, decode)


@dataclass(frozen=True)
class _RandEvent:
    """One randomization event's OIDs, and its factors' item OIDs by factor code."""

    event: str
    form: str
    group: str
    factors: dict[str, str]


@dataclass
class _Metadata:
    study_oid: str
    mdv_oid: str
    mdv_name: str
    blinded: bool
    events: list[_Event] = field(default_factory=list)
    forms: list[_Form] = field(default_factory=list)
    groups: list[_Group] = field(default_factory=list)
    items: list[_Item] = field(default_factory=list)
    codelists: list[_CodeList] = field(default_factory=list)
    randomizations: dict[int, _RandEvent] = field(default_factory=dict)  # by event id
    visits: dict[str, str] = field(default_factory=dict)  # visit code -> event OID
    arm_codes: dict[int, str] = field(default_factory=dict)  # unblinded only


def _fixed_items() -> list[_Item]:
    return [
        _Item(IT_SCREENED_AT, "Screening date and time", "datetime",
              "When the subject was screened (given a subject number), UTC", sas_name="SCRDTC"),
        _Item(IT_STATUS, "Subject status", "text", "The subject's status now", 20,
              "STATUS", CL_SUBJECT_STATUS),
        _Item(IT_UNBLINDED_AT, "Emergency unblinding date and time", "datetime",
              "When the subject's treatment was first revealed to an investigator, UTC",
              sas_name="UNBLDTC"),
        _Item(IT_CHANGED_AT, "Status change date and time", "datetime",
              "When the status changed, UTC", sas_name="STCHGDTC"),
        _Item(IT_FROM, "Status before", "text", "Status before the change", 20, "STFROM",
              CL_SUBJECT_STATUS),
        _Item(IT_TO, "Status after", "text", "Status after the change", 20, "STTO",
              CL_SUBJECT_STATUS),
        _Item(IT_REASON, "Reason", "text",
              "Reason given (screen failure, discontinuation), as recorded", sas_name="STRSN"),
        _Item(IT_RAND_NUMBER, "Randomization number", "text",
              "The randomization number given to the subject", 20, "RANDNO"),
        _Item(IT_RANDOMIZED_AT, "Randomization date and time", "datetime",
              "When the subject was randomized, UTC", sas_name="RANDDTC"),
        _Item(IT_STRATUM, "Stratum", "text",
              "The stratum randomized in (site, cohort and factor levels)", 400, "STRATUM"),
        _Item(IT_VISIT_STATUS, "Visit status", "text", "done, or missed (window passed)", 10,
              "VISSTAT", CL_VISIT_STATUS),
        _Item(IT_VISIT_DATE, "Visit date", "date", "The day the visit happened",
              sas_name="VISDT"),
        _Item(IT_DUE_DATE, "Visit due date", "date",
              "The day the schedule set for the visit", sas_name="VISDUE"),
        _Item(IT_OUT_OF_WINDOW, "Out of window", "boolean",
              "Dispensed outside the visit window", sas_name="VISOOW"),
        _Item(IT_KIT_NUMBER, "Kit number", "text", "The kit given to the subject", 20,
              "KITNO"),
        _Item(IT_DISPENSED_AT, "Dispensing date and time", "datetime",
              "When the kit was assigned to the subject, UTC", sas_name="DISPDTC"),
        _Item(IT_CONFIRMED_AT, "Confirmation date and time", "datetime",
              "When the kit number was confirmed by SMS, UTC", sas_name="CONFDTC"),
        _Item(IT_KIT_STATUS, "Kit status", "text",
              "The kit's status now (a lost or damaged kit was replaced)", 24, "KITSTAT",
              CL_KIT_STATUS),
    ]


def _fixed_codelists() -> list[_CodeList]:
    def same(*codes: str) -> tuple[tuple[str, str], ...]:
        return tuple((code, code.replace("_", " ")) for code in codes)

    return [
        _CodeList(CL_SUBJECT_STATUS, "Subject status",
                  same(SCREENED, SCREEN_FAILED, RANDOMIZED, DISCONTINUED)),
        _CodeList(CL_VISIT_STATUS, "Visit status", same(DONE, MISSED)),
        _CodeList(CL_KIT_STATUS, "Kit status", same(*SUBJECT_KIT_STATUSES)),
    ]


def _metadata(study: Study, blinded: bool, visits: tuple[VisitDef, ...]) -> _Metadata:
    suffix = "" if blinded else ".UNBLINDED"
    meta = _Metadata(
        study_oid=f"ST.{study.code}", mdv_oid=f"MDV.{study.code}.v{study.config_version}{suffix}",
        mdv_name=f"{study.code} configuration version {study.config_version}"
                 + ("" if blinded else " (unblinded)"), blinded=blinded)
    meta.items = _fixed_items()
    meta.codelists = _fixed_codelists()
    meta.events.append(_Event(SE_SCREENING, "Screening", "Scheduled", (F_SCREENING,), True))
    meta.forms.append(_Form(F_SCREENING, "Screening", ((IG_SCREENING, True),)))
    meta.groups.append(_Group(IG_SCREENING, "Screening", False, (IT_SCREENED_AT,),
                              frozenset({IT_SCREENED_AT})))
    if not blinded:
        meta.items.append(_Item(IT_ARM, "Treatment arm", "text",
                                "The arm randomized to (unblinded export only)", 20, "ARM",
                                CL_ARM))
        meta.codelists.append(_CodeList(CL_ARM, "Treatment arm",
                                        tuple((arm.code, arm.name) for arm in study.arms)))
        meta.arm_codes = {arm.id: arm.code for arm in study.arms}
    for event in study.events:
        _add_randomization_event(meta, event, blinded)
    if visits:
        meta.forms.append(_Form(F_VISIT, "Visit and dispensing",
                                ((IG_VISIT, False), (IG_KIT, False))))
        meta.groups.append(_Group(IG_VISIT, "Visit", False, (
            IT_VISIT_STATUS, IT_VISIT_DATE, IT_DUE_DATE, IT_OUT_OF_WINDOW),
            frozenset({IT_VISIT_STATUS, IT_DUE_DATE})))
        meta.groups.append(_Group(IG_KIT, "Kit dispensed", True, (
            IT_KIT_NUMBER, IT_DISPENSED_AT, IT_CONFIRMED_AT, IT_KIT_STATUS),
            frozenset({IT_KIT_NUMBER, IT_DISPENSED_AT, IT_KIT_STATUS})))
    for visit in visits:
        oid = meta.visits[visit.code] = f"SE.VISIT.{visit.code}"
        planned = "" if visit.day is None else f" (day {visit.day})"
        meta.events.append(_Event(oid, f"Visit {visit.code}{planned}", "Scheduled",
                                  (F_VISIT,), False))
    meta.events.append(_Event(SE_STATUS, "Subject status", "Common", (F_STATUS,), True))
    meta.forms.append(_Form(F_STATUS, "Subject status",
                            ((IG_STATUS, True), (IG_STATUS_CHANGE, False))))
    meta.groups.append(_Group(IG_STATUS, "Subject status", False, (IT_STATUS, IT_UNBLINDED_AT),
                              frozenset({IT_STATUS})))
    meta.groups.append(_Group(IG_STATUS_CHANGE, "Status change", True,
                              (IT_CHANGED_AT, IT_FROM, IT_TO, IT_REASON),
                              frozenset({IT_CHANGED_AT, IT_TO})))
    return meta


def _add_randomization_event(meta: _Metadata, event, blinded: bool) -> None:
    code = event.code
    rand = _RandEvent(f"SE.RAND.{code}", f"F.RAND.{code}", f"IG.RAND.{code}", {})
    for factor in event.factors:
        item = rand.factors[factor.code] = f"IT.{code}.{factor.code}"
        codelist = f"CL.{code}.{factor.code}"
        meta.items.append(_Item(item, f"{factor.code} ({code})", "text",
                                f"Stratification factor {factor.code} at {code}",
                                codelist=codelist))
        meta.codelists.append(_CodeList(codelist, f"{factor.code} levels ({code})",
                                        tuple((level.code, level.code)
                                              for level in factor.levels)))
    items = (IT_RAND_NUMBER, IT_RANDOMIZED_AT, IT_STRATUM, *rand.factors.values())
    if not blinded:
        items += (IT_ARM,)  # unblinded items come last, as in the reports
    meta.events.append(_Event(rand.event, f"Randomization {code}", "Scheduled", (rand.form,),
                              False))
    meta.forms.append(_Form(rand.form, f"Randomization {code}", ((rand.group, True),)))
    meta.groups.append(_Group(rand.group, f"Randomization {code}", False, items,
                              frozenset({IT_RAND_NUMBER, IT_RANDOMIZED_AT})))
    meta.randomizations[event.id] = rand


# --- the XML writer ------------------------------------------------------------------------


class _Xml:
    """Streamed, indented XML: every element is written as soon as it is opened
    or closed, so memory does not grow with the file."""

    def __init__(self, stream: IO) -> None:
        self._out = XMLGenerator(stream, encoding="utf-8", short_empty_elements=True)
        self._depth = 0
        self._written = False

    def open(self, name: str, attrs: dict[str, str | None] | None = None) -> None:
        self._newline()
        self._out.startElement(name, _present(attrs))
        self._depth += 1

    def close(self, name: str) -> None:
        self._depth -= 1
        self._newline()
        self._out.endElement(name)

    def empty(self, name: str, attrs: dict[str, str | None] | None = None) -> None:
        self._newline()
        self._out.startElement(name, _present(attrs))
        self._out.endElement(name)

    def text(self, name: str, text: str, attrs: dict[str, str | None] | None = None) -> None:
        self._newline()
        self._out.startElement(name, _present(attrs))
        self._out.characters(text)
        self._out.endElement(name)

    def translated(self, name: str, text: str) -> None:
        """``<Description>`` and the like: one English ``TranslatedText``."""
        self.open(name)
        self.text("TranslatedText", text, {"xml:lang": "en"})
        self.close(name)

    def start(self) -> None:
        self._out.startDocument()

    def end(self) -> None:
        self._out.ignorableWhitespace("\n")
        self._out.endDocument()

    def _newline(self) -> None:
        # startDocument ended the declaration's line: the root element starts at once
        if self._written:
            self._out.ignorableWhitespace("\n" + "  " * self._depth)
        self._written = True


def _present(attrs: dict[str, str | None] | None) -> dict[str, str]:
    return {name: value for name, value in (attrs or {}).items() if value is not None}


def _yes(flag: bool) -> str:
    return "Yes" if flag else "No"


# --- the file ------------------------------------------------------------------------------


def write_odm(session: Session, study: Study, stream: IO, *, blinded: bool = True,
              generated_at: datetime | None = None) -> int:
    """Write the study as an ODM 1.3.2 snapshot to ``stream`` (binary: UTF-8 bytes;
    or text) and return the number of subjects written."""
    generated_at = generated_at or utcnow()
    meta = _metadata(study, blinded, visit_catalogue(session, study))
    xml = _Xml(stream)
    xml.start()
    stamp = _utc(generated_at)
    xml.open("ODM", {
        "xmlns": NAMESPACE, "ODMVersion": ODM_VERSION, "FileType": "Snapshot",
        "FileOID": f"ivrs.{study.code}.{stamp}" + ("" if blinded else ".unblinded"),
        "CreationDateTime": stamp, "AsOfDateTime": stamp, "SourceSystem": "ivrs",
        "SourceSystemVersion": _ivrs_version(),
        "Description": f"{study.code}: randomization and dispensing, "
                       + ("blinded" if blinded else "UNBLINDED")})
    _write_study(xml, study, meta)
    _write_sites(xml, session, study, meta)
    xml.open("ClinicalData", {"StudyOID": meta.study_oid, "MetaDataVersionOID": meta.mdv_oid})
    count = 0
    for subject in _subjects(session, study, blinded):
        _write_subject(xml, meta, subject)
        count += 1
    xml.close("ClinicalData")
    xml.close("ODM")
    xml.end()
    return count


def _ivrs_version() -> str | None:
    try:
        return version("ivrs")
    except PackageNotFoundError:  # running from a source tree that is not installed
        return None


def _write_study(xml: _Xml, study: Study, meta: _Metadata) -> None:
    xml.open("Study", {"OID": meta.study_oid})
    xml.open("GlobalVariables")
    xml.text("StudyName", study.code)
    xml.text("StudyDescription", study.name)
    xml.text("ProtocolName", study.code)
    xml.close("GlobalVariables")
    xml.open("MetaDataVersion", {"OID": meta.mdv_oid, "Name": meta.mdv_name})
    xml.open("Protocol")
    for order, event in enumerate(meta.events, start=1):
        xml.empty("StudyEventRef", {"StudyEventOID": event.oid, "OrderNumber": str(order),
                                    "Mandatory": _yes(event.mandatory)})
    xml.close("Protocol")
    for event in meta.events:
        xml.open("StudyEventDef", {"OID": event.oid, "Name": event.name, "Repeating": "No",
                                   "Type": event.kind})
        for order, form in enumerate(event.forms, start=1):
            xml.empty("FormRef", {"FormOID": form, "OrderNumber": str(order),
                                  "Mandatory": "Yes"})
        xml.close("StudyEventDef")
    for form in meta.forms:
        xml.open("FormDef", {"OID": form.oid, "Name": form.name, "Repeating": "No"})
        for order, (group, mandatory) in enumerate(form.groups, start=1):
            xml.empty("ItemGroupRef", {"ItemGroupOID": group, "OrderNumber": str(order),
                                       "Mandatory": _yes(mandatory)})
        xml.close("FormDef")
    for group in meta.groups:
        xml.open("ItemGroupDef", {"OID": group.oid, "Name": group.name,
                                  "Repeating": _yes(group.repeating)})
        for order, item in enumerate(group.items, start=1):
            xml.empty("ItemRef", {"ItemOID": item, "OrderNumber": str(order),
                                  "Mandatory": _yes(item in group.mandatory)})
        xml.close("ItemGroupDef")
    for item in meta.items:
        xml.open("ItemDef", {"OID": item.oid, "Name": item.name, "DataType": item.data_type,
                             "Length": str(item.length) if item.length else None,
                             "SASFieldName": item.sas_name})
        xml.translated("Description", item.description)
        if item.codelist:
            xml.empty("CodeListRef", {"CodeListOID": item.codelist})
        xml.close("ItemDef")
    for codelist in meta.codelists:
        xml.open("CodeList", {"OID": codelist.oid, "Name": codelist.name, "DataType": "text"})
        for order, (value, decode) in enumerate(codelist.terms, start=1):
            xml.open("CodeListItem", {"CodedValue": value, "OrderNumber": str(order)})
            xml.translated("Decode", decode)
            xml.close("CodeListItem")
        xml.close("CodeList")
    xml.close("MetaDataVersion")
    xml.close("Study")


def _location(site_code: str) -> str:
    return f"LOC.{site_code}"


def _write_sites(xml: _Xml, session: Session, study: Study, meta: _Metadata) -> None:
    """The sites as Locations: what each subject's ``SiteRef`` points at."""
    effective = (study.updated_at or study.created_at or utcnow()).date().isoformat()
    xml.open("AdminData", {"StudyOID": meta.study_oid})
    sites = session.execute(select(Site.code, Site.name).where(Site.study_id == study.id)
                            .order_by(Site.code))
    for code, name in sites:
        xml.open("Location", {"OID": _location(code), "Name": name, "LocationType": "Site"})
        xml.empty("MetaDataVersionRef", {"StudyOID": meta.study_oid,
                                         "MetaDataVersionOID": meta.mdv_oid,
                                         "EffectiveDate": effective})
        xml.close("Location")
    xml.close("AdminData")


# --- subjects, read in batches --------------------------------------------------------------


@dataclass
class _SubjectData:
    number: str
    site: str
    status: str
    screened_at: datetime
    unblinded_at: datetime | None
    randomizations: list = field(default_factory=list)
    kits: dict[str, list] = field(default_factory=lambda: defaultdict(list))  # by visit
    visits: dict[str, tuple] = field(default_factory=dict)
    history: list = field(default_factory=list)


def _subjects(session: Session, study: Study, blinded: bool) -> Iterator[_SubjectData]:
    """Subjects in subject-number order, each with everything written about it.

    The subjects are read through one cursor, ``BATCH`` at a time; each batch's
    randomizations, kits, visits and status changes come with one query each.
    """
    query = (select(Subject.id, Subject.subject_number, Site.code, Subject.status,
                    Subject.screened_at, Subject.unblinded_at)
             .join(Site, Site.id == Subject.site_id)
             .where(Subject.study_id == study.id)
             .order_by(Subject.subject_number)
             .execution_options(yield_per=BATCH))
    for batch in session.execute(query).partitions():
        subjects = {row[0]: _SubjectData(*row[1:]) for row in batch}
        for subject_id, *row in session.execute(_randomizations(subjects, blinded)):
            subjects[subject_id].randomizations.append(row)
        for subject_id, visit, *row in session.execute(_kits(subjects)):
            subjects[subject_id].kits[visit].append(row)
        for subject_id, visit, *row in session.execute(_visits(subjects)):
            subjects[subject_id].visits[visit] = tuple(row)
        for subject_id, *row in session.execute(_history(subjects)):
            subjects[subject_id].history.append(row)
        yield from subjects.values()


def _randomizations(subjects: dict, blinded: bool) -> Select:
    # a blinded export does not even read the arm
    arm = null() if blinded else Randomization.arm_id
    return (select(Randomization.subject_id, Randomization.event_id,
                   Randomization.randomization_number, Randomization.randomized_at,
                   Randomization.stratum_key, Randomization.factors, arm)
            .where(Randomization.subject_id.in_(list(subjects)))
            .order_by(Randomization.randomized_at, Randomization.id))


def _kits(subjects: dict) -> Select:
    return (select(Kit.subject_id, Kit.visit_code, Kit.kit_number, Kit.assigned_at,
                   Kit.confirmed_at, Kit.status)
            .where(Kit.subject_id.in_(list(subjects)), Kit.visit_code.is_not(None))
            .order_by(Kit.assigned_at, Kit.kit_number))


def _visits(subjects: dict) -> Select:
    return (select(SubjectVisit.subject_id, SubjectVisit.visit_code, SubjectVisit.status,
                   SubjectVisit.occurred_on, SubjectVisit.due_on, SubjectVisit.out_of_window)
            .where(SubjectVisit.subject_id.in_(list(subjects))))


def _history(subjects: dict) -> Select:
    return (select(SubjectStatusChange.subject_id, SubjectStatusChange.at,
                   SubjectStatusChange.from_status, SubjectStatusChange.to_status,
                   SubjectStatusChange.reason)
            .where(SubjectStatusChange.subject_id.in_(list(subjects)))
            .order_by(SubjectStatusChange.at, SubjectStatusChange.id))


# --- one subject ---------------------------------------------------------------------------


def _write_subject(xml: _Xml, meta: _Metadata, subject: _SubjectData) -> None:
    xml.open("SubjectData", {"SubjectKey": subject.number})
    xml.empty("SiteRef", {"LocationOID": _location(subject.site)})
    _event(xml, SE_SCREENING, F_SCREENING,
           [(IG_SCREENING, None, [(IT_SCREENED_AT, _utc(subject.screened_at))])])
    for event_id, number, randomized_at, stratum, factors, arm_id in subject.randomizations:
        rand = meta.randomizations[event_id]
        items = [(IT_RAND_NUMBER, number), (IT_RANDOMIZED_AT, _utc(randomized_at)),
                 (IT_STRATUM, stratum)]
        items += [(oid, (factors or {}).get(code)) for code, oid in rand.factors.items()]
        if not meta.blinded:
            items.append((IT_ARM, meta.arm_codes.get(arm_id)))
        _event(xml, rand.event, rand.form, [(rand.group, None, items)])
    for code, event_oid in meta.visits.items():
        groups = []
        if code in subject.visits:
            status, occurred_on, due_on, out_of_window = subject.visits[code]
            groups.append((IG_VISIT, None, [
                (IT_VISIT_STATUS, status), (IT_VISIT_DATE, _day(occurred_on)),
                (IT_DUE_DATE, _day(due_on)), (IT_OUT_OF_WINDOW, _boolean(out_of_window))]))
        for key, (number, assigned_at, confirmed_at, status) in enumerate(
                subject.kits.get(code, ()), start=1):
            groups.append((IG_KIT, str(key), [
                (IT_KIT_NUMBER, number), (IT_DISPENSED_AT, _utc(assigned_at)),
                (IT_CONFIRMED_AT, _utc(confirmed_at)), (IT_KIT_STATUS, status)]))
        if groups:
            _event(xml, event_oid, F_VISIT, groups)
    groups = [(IG_STATUS, None, [(IT_STATUS, subject.status),
                                 (IT_UNBLINDED_AT, _utc(subject.unblinded_at))])]
    for key, (at, old, new, reason) in enumerate(subject.history, start=1):
        groups.append((IG_STATUS_CHANGE, str(key), [
            (IT_CHANGED_AT, _utc(at)), (IT_FROM, old), (IT_TO, new), (IT_REASON, reason)]))
    _event(xml, SE_STATUS, F_STATUS, groups)
    xml.close("SubjectData")


def _event(xml: _Xml, event: str, form: str,
           groups: list[tuple[str, str | None, list[tuple[str, str | None]]]]) -> None:
    """One StudyEventData with its one form: item groups of (OID, repeat key, items);
    items without a value are left out."""
    xml.open("StudyEventData", {"StudyEventOID": event})
    xml.open("FormData", {"FormOID": form})
    for group, repeat_key, items in groups:
        xml.open("ItemGroupData", {"ItemGroupOID": group, "ItemGroupRepeatKey": repeat_key})
        for item, value in items:
            if value not in (None, ""):
                xml.empty("ItemData", {"ItemOID": item, "Value": value})
        xml.close("ItemGroupData")
    xml.close("FormData")
    xml.close("StudyEventData")


def _day(value: date | None) -> str | None:
    return value.isoformat() if value else None


def _boolean(value: bool | None) -> str | None:
    return None if value is None else ("true" if value else "false")
