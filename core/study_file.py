"""Reading and checking a study definition file (SPEC §4) without touching the database.

``parse_study_file`` makes three passes, and each reports *every* problem it
finds as a ``FileError`` naming the line and the field (``sites[2].depot``):

1. YAML to plain data, with a map from each value's path to its line. Duplicate
   keys are refused (PyYAML would silently keep the last one).
2. Shape and formats: pydantic models, unknown keys refused.
3. Cross-references: an arm named in a ratio exists, a site's depot exists ...

A pass runs only when the one before found nothing: references cannot be
checked in a file whose shape is wrong.

Scalars are typed by the schema, not by YAML 1.1's implicit rules. Every
scalar reaches pydantic as the text that was written (``null``, ``~`` and an
empty value excepted), and pydantic converts it where the schema wants a
number or a boolean. So ``country: NO`` stays Norway (YAML 1.1 reads
``false``), ``code: 0101`` stays ``"0101"`` (YAML 1.1 reads octal 65), and a
site code may be written with or without quotes; ``day: soon`` is still an error.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveInt,
    PrivateAttr,
    StringConstraints,
    ValidationError,
)

from core.errors import FileError, FileErrors
from core.fields import email_problem

PathTuple = tuple[str | int, ...]

ROLES = ("site_coordinator", "investigator", "pharmacist", "project_manager",
         "depot_manager", "unblinded_statistician", "admin")
# Roles that act at sites (SPEC §4: "a user acts only at their own sites").
SITE_ROLES = {"site_coordinator", "investigator", "pharmacist"}
METHODS = ("list", "block", "minimization", "simple", "none")
ELIGIBILITY_SOURCES = ("ivrs", "edc")
# Names that stratum keys and cap keys already use for something else.
RESERVED_FACTOR_CODES = {"site", "cohort", "total"}
# A level is chosen on the phone with one digit (SPEC §6: digit = position).
MAX_LEVELS = 9
SINGLE_EVENT_CODE = "R1"


# --- pass 1: YAML with line numbers ------------------------------------------------------


@dataclass
class SourceMap:
    """Where each value of the file was written, to point errors at a line."""

    file: str
    lines: dict[PathTuple, int] = field(default_factory=dict)
    # ``randomization:`` written as one mapping: shown as ``randomization.ratio``
    # although it is stored (and validated) as the list ``randomization[0]``.
    single_event: bool = False

    def line(self, path: PathTuple) -> int | None:
        """The line of ``path``, or of its nearest ancestor that was written."""
        path = tuple(path)
        while path and path not in self.lines:
            path = path[:-1]
        return self.lines.get(path)

    def field_name(self, path: PathTuple) -> str:
        parts: list[str] = []
        for position, part in enumerate(path):
            if isinstance(part, int):
                if self.single_event and position == 1 and path[0] == "randomization":
                    continue
                parts.append(f"[{part}]")
            else:
                parts.append(("." if parts else "") + str(part))
        return "".join(parts)

    def error(self, path: PathTuple, message: str) -> FileError:
        return FileError(self.file, self.line(path), self.field_name(path) or None, message)


def read_yaml(path) -> tuple[Any, SourceMap]:
    """The file as plain dicts, lists and strings, and where each value was written."""
    source = SourceMap(str(path))
    text = _read_text(path, source)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        raise FileErrors([_yaml_syntax_error(exc, source)]) from None
    except yaml.YAMLError as exc:  # e.g. a control character (ReaderError)
        position = getattr(exc, "position", None)
        line = text.count("\n", 0, position) + 1 if position is not None else None
        raise FileErrors([FileError(source.file, line, None, f"not valid YAML: {exc}")]) from None
    if root is None:
        raise FileErrors([FileError(source.file, None, None, "the file is empty")])
    errors: list[FileError] = []
    data = _node_to_data(root, (), source, errors, active=set())
    if errors:
        raise FileErrors(errors)
    return data, source


def _read_text(path, source: SourceMap) -> str:
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise FileErrors([FileError(source.file, None, None,
                                    f"cannot read the file: {exc.strerror}")]) from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise FileErrors([FileError(source.file, line, None,
                                    f"not UTF-8 text (byte 0x{raw[exc.start]:02x})")]) from None


def _yaml_syntax_error(exc: yaml.MarkedYAMLError, source: SourceMap) -> FileError:
    mark = exc.problem_mark or exc.context_mark
    what = " ".join(part for part in (exc.context, exc.problem) if part)
    return FileError(source.file, mark.line + 1 if mark else None, None,
                     f"YAML syntax error: {what or exc}")


def _node_to_data(node: yaml.Node, path: PathTuple, source: SourceMap,
                  errors: list[FileError], active: set[int]) -> Any:
    source.lines.setdefault(path, node.start_mark.line + 1)
    if id(node) in active:  # an alias that contains itself
        errors.append(source.error(path, "a YAML alias refers to itself"))
        return None
    if isinstance(node, yaml.ScalarNode):
        return _scalar(node)
    active.add(id(node))
    try:
        if isinstance(node, yaml.SequenceNode):
            return [_node_to_data(item, path + (index,), source, errors, active)
                    for index, item in enumerate(node.value)]
        return _mapping_to_dict(node, path, source, errors, active)
    finally:
        active.discard(id(node))


def _mapping_to_dict(node: yaml.MappingNode, path: PathTuple, source: SourceMap,
                     errors: list[FileError], active: set[int]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key_node, value_node in node.value:
        key_line = key_node.start_mark.line + 1
        if not isinstance(key_node, yaml.ScalarNode):
            errors.append(FileError(source.file, key_line, source.field_name(path) or None,
                                    "a key must be plain text"))
            continue
        key = key_node.value
        if key in result:
            errors.append(FileError(
                source.file, key_line, source.field_name(path + (key,)),
                f"duplicate key {key!r} (first at line {source.lines[path + (key,)]})"))
            continue
        # A value's line is its key's line: that is where a reader looks.
        source.lines[path + (key,)] = key_line
        result[key] = _node_to_data(value_node, path + (key,), source, errors, active)
    return result


def _scalar(node: yaml.ScalarNode) -> str | None:
    # Only null is resolved here; everything else stays the written text and
    # is typed by the schema (see the module docstring).
    if node.tag == "tag:yaml.org,2002:null" and node.style is None:
        return None
    return node.value


# --- pass 2: shape and formats (pydantic) --------------------------------------------------


def _formatted(regex: str, description: str, *, echo: bool = True):
    """A string type that must match ``regex``; the error says what is expected."""
    pattern = re.compile(regex)

    def check(value: str) -> str:
        if not pattern.fullmatch(value):
            # PINs are never echoed, not even in an error message.
            shown = f"{value!r} is not " if echo else "must be "
            raise ValueError(shown + description)
        return value

    return AfterValidator(check)


def _check_timezone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {value!r} (use an IANA name such as "
                         "Europe/Paris or America/New_York)") from None
    return value


def _check_email(value: str) -> str:
    problem = email_problem(value)
    if problem is not None:
        raise ValueError(f"{value!r} is not an e-mail address: {problem}")
    return value


Stripped = StringConstraints(strip_whitespace=True)
Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
# Codes end up in stratum keys (SEX=F|AGE=GE65) and cap keys (SEX=F,AGE=GE65),
# hence no '=', '|', ',' or spaces.
Code = Annotated[str, Stripped, _formatted(
    r"[A-Za-z0-9_.+-]{1,20}", "a code of 1 to 20 letters, digits, '_', '.', '+' or '-'")]
StudyCode = Annotated[str, Stripped, _formatted(
    r"[A-Za-z0-9_.-]{1,40}", "a study code of 1 to 40 letters, digits, '_', '.' or '-'")]
# SPEC §4: every identifier typed on a keypad is a digit string. A site code
# leaves room for the 4-digit subject sequence in a 20-character subject number.
SiteCode = Annotated[str, Stripped, _formatted(r"[0-9]{1,16}", "a site code of 1 to 16 digits")]
DepotCode = Annotated[str, Stripped, _formatted(r"[0-9]{1,20}", "a depot code of 1 to 20 digits")]
UserCode = Annotated[str, Stripped, _formatted(r"[0-9]{1,20}", "a user id of 1 to 20 digits")]
Pin = Annotated[str, Stripped, _formatted(r"[0-9]{4,8}", "4 to 8 digits", echo=False)]
Phone = Annotated[str, Stripped, _formatted(
    r"\+[1-9][0-9]{5,14}", "an E.164 phone number ('+' then 6 to 15 digits, e.g. +33612345678)")]
Locale = Annotated[str, Stripped, _formatted(
    r"[a-z]{2,3}(_[A-Z]{2})?", "a locale code such as en, fr, pt_BR or zh_CN")]
Country = Annotated[str, Stripped, _formatted(
    r"[A-Z]{2}", "a two-letter ISO country code in capitals (FR, DE, US ...)")]
TimeZone = Annotated[str, Stripped, AfterValidator(_check_timezone)]
Email = Annotated[str, Stripped, AfterValidator(_check_email)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StudyInfo(Section):
    code: StudyCode
    name: Name
    languages: list[Locale] = Field(min_length=1)  # order = the voice language menu
    phone_numbers: list[Phone] = []


class ArmDef(Section):
    code: Code
    name: Name


class FactorDef(Section):
    code: Code
    levels: list[Code] = Field(min_length=1)


class MinimizationDef(Section):
    p: float = Field(gt=0, le=1, allow_inf_nan=False)
    imbalance: Literal["range", "variance"] = "range"
    weights: dict[str, Annotated[float, Field(gt=0, allow_inf_nan=False)]] = {}


class BlockDef(Section):
    sizes: list[PositiveInt] = Field(min_length=1)
    seed: int


class EventDef(Section):
    event: Code = SINGLE_EVENT_CODE
    method: Literal[METHODS]  # type: ignore[valid-type]
    ratio: dict[str, PositiveInt] | None = None
    stratify_by_site: bool = False
    factors: list[FactorDef] = []
    minimization: MinimizationDef | None = None
    block: BlockDef | None = None
    seed: int | None = None
    caps: dict[str, NonNegativeInt] = {}
    cohorts: list[Code] = []
    current_cohort: Code | None = None
    # Who answers the eligibility questions: the phone asks them (ivrs), or the
    # EDC records them through the API (edc; SPEC §10). A setting of the study,
    # written in the randomization section (on its first event when it is a
    # list): stored in Study.config, not in the event's params.
    eligibility_source: Literal[ELIGIBILITY_SOURCES] = "ivrs"  # type: ignore[valid-type]

    def params(self) -> dict[str, Any]:
        """What ``RandomizationEvent.params`` holds: the method's parameters."""
        minimization = None
        if self.minimization is not None:
            weights = {f.code: float(self.minimization.weights.get(f.code, 1.0))
                       for f in self.factors}
            minimization = {"p": self.minimization.p, "imbalance": self.minimization.imbalance,
                            "weights": weights}
            if self.stratify_by_site:
                minimization["site_weight"] = float(self.minimization.weights.get("site", 1.0))
        return {
            "block": self.block.model_dump() if self.block else None,
            "minimization": minimization,
            "seed": self.seed,
            "cohorts": list(self.cohorts),
            "current_cohort": self.current_cohort,
        }


class UnblindingDef(Section):
    mode: Literal["investigator", "approval"] = "investigator"
    # mode approval: the roles that approve (never the requester), and how long a
    # request waits for a decision before it expires
    approvers: list[Literal["project_manager", "investigator"]] = ["project_manager"]
    expire_hours: PositiveInt = 24


class WebDef(Section):
    # The web console asks every role for a TOTP code after the password
    # (SPEC §11), the site roles only when the study says so.
    totp_for_site_roles: bool = False


class KitTypeDef(Section):
    code: Code
    arm: Code


class VisitDef(Section):
    code: Code
    day: NonNegativeInt  # relative to randomization
    window: tuple[int, int]  # days before and after ``day``
    dispense: NonNegativeInt  # kits per visit


class ResupplyDef(Section):
    trigger: NonNegativeInt
    target: NonNegativeInt


class SupplyDef(Section):
    do_not_dispense_days: NonNegativeInt = 0
    do_not_ship_days: NonNegativeInt = 0
    default_resupply: ResupplyDef | None = None
    # kits expiring within this many days are notified (core.supply.expiry)
    expiry_warning_days: NonNegativeInt = 30
    # add the kits subjects need for visits due before a shipment can arrive
    predictive: bool = False
    # a newly active site's first shipment (default: its resupply target)
    initial: ResupplyDef | None = None
    # kits still unconfirmed by SMS this many hours after assignment get one reminder
    confirmation_reminder_hours: PositiveInt = 24
    # a declared return nobody approved or rejected in this time expires
    return_approval_hours: PositiveInt = 14 * 24


class DepotDef(Section):
    code: DepotCode
    name: Name
    country: Country


class SiteDef(Section):
    code: SiteCode
    name: Name
    country: Country
    language: Locale | None = None  # default: the study's first language
    timezone: TimeZone
    depot: DepotCode | None = None
    shipping_days: NonNegativeInt = 3  # depot to site lead time (resupply plans with it)
    resupply: dict[str, ResupplyDef] = {}  # per kit type code: overrides default_resupply


class UserDef(Section):
    id: UserCode
    name: Name
    role: Literal[ROLES]  # type: ignore[valid-type]
    sites: list[SiteCode] = []
    phone: Phone | None = None
    email: Email | None = None  # notifications by e-mail too (SMTP_URL)
    language: Locale | None = None  # default: the language of the user's first site
    pin: Pin | None = None


class StudyDefinition(Section):
    """A validated study file. ``randomization`` is always a list of events."""

    study: StudyInfo
    arms: list[ArmDef] = Field(min_length=1)
    randomization: list[EventDef] = Field(min_length=1)
    eligibility: list[Code] = []
    unblinding: UnblindingDef = UnblindingDef()
    web: WebDef = WebDef()
    kit_types: list[KitTypeDef] = []
    visits: list[VisitDef] = []
    # A cohort with its own schedule (subjects randomized in that cohort follow it).
    visits_by_cohort: dict[Code, list[VisitDef]] = {}
    supply: SupplyDef | None = None
    depots: list[DepotDef] = []
    sites: list[SiteDef] = Field(min_length=1)
    users: list[UserDef] = []

    _source: SourceMap = PrivateAttr(default_factory=lambda: SourceMap("<memory>"))

    @property
    def source(self) -> SourceMap:
        return self._source

    @property
    def events(self) -> list[EventDef]:
        return self.randomization

    @property
    def eligibility_source(self) -> str:
        """The study's (written on its first randomization event)."""
        return self.randomization[0].eligibility_source

    def config(self) -> dict[str, Any]:
        """What ``Study.config`` holds: the sections later features read."""
        return {
            "eligibility_source": self.eligibility_source,
            "kit_types": [kit.model_dump(mode="json") for kit in self.kit_types],
            "visits": [visit.model_dump(mode="json") for visit in self.visits],
            "visits_by_cohort": {cohort: [visit.model_dump(mode="json") for visit in visits]
                                 for cohort, visits in self.visits_by_cohort.items()},
            "supply": self.supply.model_dump(mode="json") if self.supply else None,
            "unblinding": {"approvers": list(self.unblinding.approvers),
                           "expire_hours": self.unblinding.expire_hours},
            "web": self.web.model_dump(mode="json"),
        }


def parse_study_file(path) -> StudyDefinition:
    """Read and check a study file; raises ``FileErrors`` listing every problem."""
    data, source = read_yaml(path)
    data = _one_event_as_list(data, source)
    try:
        definition = StudyDefinition.model_validate(data)
    except ValidationError as exc:
        raise FileErrors([_shape_error(error, source) for error in exc.errors()]) from None
    definition._source = source
    errors = CrossChecks(definition).run()
    if errors:
        raise FileErrors(sorted(errors, key=lambda error: error.line or 0))
    _fill_defaults(definition)
    return definition


def _one_event_as_list(data: Any, source: SourceMap) -> Any:
    """``randomization:`` as one mapping is the list of that one event (code R1)."""
    if not isinstance(data, dict):
        raise FileErrors([FileError(source.file, 1, None,
                                    "the file must be a mapping of sections "
                                    "(study, arms, randomization, sites ...)")])
    if isinstance(data.get("randomization"), dict):
        data = {**data, "randomization": [data["randomization"]]}
        source.single_event = True
        source.lines = {
            (path[:1] + (0,) + path[1:] if path[:1] == ("randomization",) and len(path) > 1
             else path): line
            for path, line in source.lines.items()
        }
        source.lines[("randomization", 0)] = source.lines[("randomization",)]
    return data


def _shape_error(error: dict[str, Any], source: SourceMap) -> FileError:
    loc = tuple(error["loc"])
    kind, message = error["type"], error["msg"]
    if kind == "missing":
        message = "required, but missing"
    elif kind == "extra_forbidden":
        allowed = _allowed_keys(loc[:-1])
        message = f"unknown key {loc[-1]!r}" + (f" (allowed: {', '.join(allowed)})"
                                                if allowed else "")
    elif kind == "value_error":
        message = message.removeprefix("Value error, ")
    elif kind == "literal_error":
        message = f"{error['input']!r} is not allowed (allowed: {error['ctx']['expected']})"
    elif loc[-1:] != ("pin",):  # PINs are never echoed
        message = f"{message[:1].lower()}{message[1:]} (got {_short(error['input'])})"
    return source.error(loc, message)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _allowed_keys(loc: PathTuple) -> list[str]:
    """The keys the model at ``loc`` accepts, to list them in an "unknown key" error."""
    annotation: Any = StudyDefinition
    for part in loc:
        annotation = _unwrap(annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            if part not in annotation.model_fields:
                return []
            annotation = annotation.model_fields[part].annotation
        elif get_origin(annotation) in (list, dict):
            annotation = get_args(annotation)[-1]
        else:
            return []
    annotation = _unwrap(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return list(annotation.model_fields)
    return []


def _unwrap(annotation: Any) -> Any:
    """``X | None`` and ``Annotated[X, ...]`` to ``X``."""
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
        elif origin in (Union, UnionType):
            annotation = next(a for a in get_args(annotation) if a is not type(None))
        else:
            return annotation


def _fill_defaults(definition: StudyDefinition) -> None:
    """Languages left out: a site speaks the study's first, a user their first site's."""
    site_language = {}
    for site in definition.sites:
        site.language = site.language or definition.study.languages[0]
        site_language[site.code] = site.language
    for user in definition.users:
        first_site = site_language.get(user.sites[0]) if user.sites else None
        user.language = user.language or first_site or definition.study.languages[0]


# --- pass 3: cross-references --------------------------------------------------------------


def _choices(values) -> str:
    values = list(values)
    shown = ", ".join(str(v) for v in values[:12])
    return (shown + ", ...") if len(values) > 12 else (shown or "none defined")


class CrossChecks:
    """Checks between sections, on a file whose shape is already valid."""

    def __init__(self, definition: StudyDefinition):
        self.d = definition
        self.source = definition.source
        self.errors: list[FileError] = []
        self.arm_codes = [arm.code for arm in definition.arms]
        self.site_codes = {site.code for site in definition.sites}
        self.languages = definition.study.languages

    def error(self, path: PathTuple, message: str) -> None:
        self.errors.append(self.source.error(path, message))

    def run(self) -> list[FileError]:
        d = self.d
        self.unique(d.study.languages, ("study", "languages"), "language")
        self.unique(d.study.phone_numbers, ("study", "phone_numbers"), "phone number")
        self.unique(self.arm_codes, ("arms",), "arm code", key="code")
        self.unique(d.eligibility, ("eligibility",), "eligibility question")
        self.unique([e.event for e in d.randomization], ("randomization",), "event code",
                    key="event")
        for index, event in enumerate(d.randomization):
            EventChecks(self, event, ("randomization", index)).run()
        self.check_eligibility_source()
        self.check_kit_types()
        self.check_visits()
        self.check_supply()
        self.unique([depot.code for depot in d.depots], ("depots",), "depot code", key="code")
        self.check_sites()
        self.check_users()
        return self.errors

    def check_eligibility_source(self) -> None:
        """One source for the whole study; ``edc`` needs questions to record and
        a randomization to gate."""
        first, *later = self.d.randomization
        for index, event in enumerate(later, start=1):
            if "eligibility_source" in event.model_fields_set:
                self.error(("randomization", index, "eligibility_source"),
                           "eligibility_source is a setting of the whole study: give it on "
                           f"the first event ({first.event}) only")
        if first.eligibility_source != "edc":
            return
        path = ("randomization", 0, "eligibility_source")
        if not self.d.eligibility:
            self.error(path, "eligibility_source edc: the EDC records the answers to the "
                             "study's eligibility questions, but the file has none "
                             "(add eligibility: [INC1, ...])")
        if all(event.method == "none" for event in self.d.randomization):
            self.error(path, "eligibility_source edc gates randomization, and method none "
                             "does not randomize")

    def unique(self, values: list, path: PathTuple, what: str, *, key: str | None = None) -> None:
        first_index: dict[Any, int] = {}
        for index, value in enumerate(values):
            item_path = path + (index,) + ((key,) if key else ())
            if value in first_index:
                first = path + (first_index[value],) + ((key,) if key else ())
                self.error(item_path, f"duplicate {what} {value!r} "
                                      f"(first at line {self.source.line(first)})")
            else:
                first_index[value] = index

    def known(self, value: str, allowed, path: PathTuple, what: str) -> bool:
        if value in allowed:
            return True
        self.error(path, f"unknown {what} {value!r} ({what}s: {_choices(sorted(allowed))})")
        return False

    def check_kit_types(self) -> None:
        self.unique([kit.code for kit in self.d.kit_types], ("kit_types",), "kit type",
                    key="code")
        for index, kit in enumerate(self.d.kit_types):
            self.known_arm(kit.arm, ("kit_types", index, "arm"))

    def known_arm(self, code: str, path: PathTuple) -> bool:
        if code in self.arm_codes:
            return True
        self.error(path, f"unknown arm {code!r} (arms: {_choices(self.arm_codes)})")
        return False

    def check_visits(self) -> None:
        self.check_schedule(self.d.visits, ("visits",))
        cohorts = {cohort for event in self.d.randomization for cohort in event.cohorts}
        for cohort, visits in self.d.visits_by_cohort.items():
            if self.known(cohort, cohorts, ("visits_by_cohort", cohort), "cohort"):
                self.check_schedule(visits, ("visits_by_cohort", cohort))

    def check_schedule(self, visits: list[VisitDef], path: PathTuple) -> None:
        self.unique([visit.code for visit in visits], path, "visit code", key="code")
        for index, visit in enumerate(visits):
            before, after = visit.window
            if not before <= 0 <= after:
                self.error(path + (index, "window"),
                           f"window [{before}, {after}] must be [days before, days after] "
                           "with days before <= 0 <= days after, e.g. [-3, 3]")
            if visit.dispense and not self.d.kit_types:
                self.error(path + (index, "dispense"),
                           f"dispenses {visit.dispense} kit(s) but the study has no kit_types")

    def check_supply(self) -> None:
        supply = self.d.supply
        resupply = supply.default_resupply if supply else None
        if resupply and resupply.trigger >= resupply.target:
            self.error(("supply", "default_resupply", "trigger"),
                       f"trigger ({resupply.trigger}) must be below target ({resupply.target}): "
                       "a site is resupplied up to target when its stock falls to trigger")
        initial = supply.initial if supply else None
        if initial and initial.target < 1:
            self.error(("supply", "initial", "target"),
                       "the initial shipment's target must be at least 1")

    def check_sites(self) -> None:
        depots = {depot.code for depot in self.d.depots}
        self.unique([site.code for site in self.d.sites], ("sites",), "site code", key="code")
        for index, site in enumerate(self.d.sites):
            path = ("sites", index)
            if site.depot is not None:
                self.known(site.depot, depots, path + ("depot",), "depot")
            self.check_language(site.language, path + ("language",))
            self.check_site_resupply(site, path)

    def check_site_resupply(self, site: SiteDef, path: PathTuple) -> None:
        kit_types = [kit.code for kit in self.d.kit_types]
        for code, levels in site.resupply.items():
            where = path + ("resupply", code)
            if not self.known(code, kit_types, where, "kit type"):
                continue
            if levels.trigger >= levels.target:
                self.error(where + ("trigger",),
                           f"trigger ({levels.trigger}) must be below target ({levels.target}): "
                           "a site is resupplied up to target when its stock falls to trigger")

    def check_language(self, language: str | None, path: PathTuple) -> None:
        if language is not None and language not in self.languages:
            self.error(path, f"language {language!r} is not one of the study languages "
                             f"({_choices(self.languages)})")

    def check_users(self) -> None:
        users = self.d.users
        self.unique([user.id for user in users], ("users",), "user id", key="id")
        phones = [user.phone for user in users]
        # SMS is routed by the sender's number: two users may not share one.
        for index, phone in enumerate(phones):
            if phone is not None and phone in phones[:index]:
                first = phones.index(phone)
                self.error(("users", index, "phone"),
                           f"phone {phone} is already user {users[first].id}'s "
                           f"(line {self.source.line(('users', first, 'phone'))}): "
                           "SMS are routed by the sender's number")
        for index, user in enumerate(users):
            path = ("users", index)
            for position, site in enumerate(user.sites):
                self.known(site, self.site_codes, path + ("sites", position), "site")
            self.unique(user.sites, path + ("sites",), "site")
            if user.role in SITE_ROLES and not user.sites:
                self.error(path + ("sites",), f"role {user.role} acts only at its own sites: "
                                              "give at least one site")
            self.check_language(user.language, path + ("language",))


class EventChecks:
    """The checks of one randomization event (its method, ratio, factors, caps)."""

    def __init__(self, checks: CrossChecks, event: EventDef, path: PathTuple):
        self.checks, self.event, self.path = checks, event, path
        self.factor_levels = {f.code: f.levels for f in event.factors}

    def error(self, *path_and_message) -> None:
        *path, message = path_and_message
        self.checks.error(self.path + tuple(path), message)

    def run(self) -> None:
        self.check_method()
        ratio_ok = self.check_ratio()
        self.check_factors()
        self.check_block(ratio_ok)
        self.check_minimization()
        self.check_cohorts()
        self.check_caps()

    def check_method(self) -> None:
        event, arms = self.event, self.checks.arm_codes
        if not self.checks.source.single_event and "event" not in event.model_fields_set:
            self.error("event", "each event of a randomization list needs its code "
                                "(event: R1, event: R2 ...)")
        if event.method == "none":
            if len(arms) != 1:
                self.error("method", "method none (treatment allocation without "
                                     f"randomization) needs exactly one arm; the study has "
                                     f"{len(arms)} ({_choices(arms)})")
            if event.factors:
                self.error("factors", "method none does not randomize: no factors")
        if event.seed is not None and event.method not in ("simple", "minimization"):
            hint = " (block takes block.seed)" if event.method == "block" else ""
            self.error("seed", f"seed is only for methods simple and minimization{hint}")

    def check_ratio(self) -> bool:
        ratio, method = self.event.ratio, self.event.method
        if ratio is None:
            if method in ("block", "minimization", "simple"):
                self.error("ratio", f"method {method} needs a ratio, e.g. "
                                    f"{{{', '.join(f'{a}: 1' for a in self.checks.arm_codes)}}}")
            return False
        if not ratio:
            self.error("ratio", "an empty ratio: give at least one arm")
            return False
        # Every arm is checked (no short-circuit) so that each unknown one is reported.
        known = [self.checks.known_arm(arm, self.path + ("ratio", arm)) for arm in ratio]
        return all(known)

    def check_factors(self) -> None:
        factors = self.event.factors
        self.checks.unique([f.code for f in factors], self.path + ("factors",), "factor",
                           key="code")
        for index, factor in enumerate(factors):
            path = ("factors", index)
            if factor.code.lower() in RESERVED_FACTOR_CODES:
                self.error(*path, "code", f"{factor.code!r} is reserved "
                                          "(site, cohort and total have their own meaning)")
            self.checks.unique(factor.levels, self.path + path + ("levels",), "level")
            if len(factor.levels) > MAX_LEVELS:
                self.error(*path, "levels", f"{len(factor.levels)} levels: at most {MAX_LEVELS}, "
                                            "a level is chosen with one keypad digit")

    def check_block(self, ratio_ok: bool) -> None:
        event = self.event
        if event.method != "block":
            if event.block is not None:
                self.error("block", f"block is only for method block (this is {event.method})")
            return
        if event.block is None:
            self.error("block", "method block needs block: {sizes: [..], seed: N}")
            return
        if not ratio_ok:
            return
        total = sum(event.ratio.values())
        for index, size in enumerate(event.block.sizes):
            if size % total:
                self.error("block", "sizes", index,
                           f"block size {size} is not a multiple of {total}, the sum of the "
                           f"ratio {event.ratio}")

    def check_minimization(self) -> None:
        event = self.event
        if event.method != "minimization":
            if event.minimization is not None:
                self.error("minimization",
                           f"minimization is only for method minimization (this is {event.method})")
            return
        if event.minimization is None:
            self.error("minimization", "method minimization needs minimization: "
                                       "{p: 0.8, imbalance: range}")
            return
        if not event.factors and not event.stratify_by_site:
            self.error("factors", "minimization needs at least one factor (or stratify_by_site)")
        weighable = list(self.factor_levels) + (["site"] if event.stratify_by_site else [])
        for code in event.minimization.weights:
            if code not in weighable:
                self.error("minimization", "weights", code,
                           f"unknown factor {code!r} (factors: {_choices(weighable)})")

    def check_cohorts(self) -> None:
        event = self.event
        self.checks.unique(event.cohorts, self.path + ("cohorts",), "cohort")
        if event.current_cohort is not None and event.current_cohort not in event.cohorts:
            self.error("current_cohort", f"unknown cohort {event.current_cohort!r} "
                                         f"(cohorts: {_choices(event.cohorts)})")

    def check_caps(self) -> None:
        normalized: dict[str, int] = {}
        for key, limit in self.event.caps.items():
            canonical = self.parse_cap_key(key)
            if canonical is None:
                continue
            if canonical in normalized:
                self.error("caps", key, f"the cap {canonical} is given twice")
            normalized[canonical] = limit
        # The canonical spelling is what is stored and compared on reload.
        self.event.caps = normalized

    def parse_cap_key(self, key: str) -> str | None:
        """``SEX=F``, ``SEX=F,AGE=GE65``, ``site=101``, ``cohort=C1``, ``total``."""
        if key.strip() == "total":
            return "total"
        conditions: dict[str, str] = {}
        for condition in key.split(","):
            name, equals, value = (part.strip() for part in condition.partition("="))
            if not (equals and name and value):
                self.error("caps", key, f"{key!r} is not FACTOR=LEVEL[,FACTOR=LEVEL...], "
                                        "site=CODE, cohort=CODE or total")
                return None
            if name in conditions:
                self.error("caps", key, f"{key!r} names {name} twice")
                return None
            if not self.known_cap_value(key, name, value):
                return None
            conditions[name] = value
        return ",".join(f"{name}={value}" for name, value in conditions.items())

    def known_cap_value(self, key: str, name: str, value: str) -> bool:
        if name == "site":
            allowed, what = sorted(self.checks.site_codes), "site"
        elif name == "cohort":
            allowed, what = self.event.cohorts, "cohort"
        elif name in self.factor_levels:
            allowed, what = self.factor_levels[name], "level"
        else:
            self.error("caps", key, f"unknown factor {name!r} in cap {key!r} (factors: "
                                    f"{_choices(self.factor_levels)}; or site, cohort, total)")
            return False
        if value not in allowed:
            of_factor = f" of {name}" if what == "level" else ""
            self.error("caps", key, f"unknown {what} {value!r}{of_factor} in cap {key!r} "
                                    f"({what}s: {_choices(allowed)})")
            return False
        return True
