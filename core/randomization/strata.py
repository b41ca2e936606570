"""Stratum keys: the one canonical spelling of "which list do I draw from".

A key lists site (when the event stratifies by site), cohort (when given), then
each stratification factor in the order the study file declares them, e.g.
``site=101|cohort=C1|SEX=F|AGE=GE65``. An unstratified event uses ``*``.
The MRL importer and the randomization service both build keys here, so an
uploaded row and a subject meet in the same stratum by construction.
"""

from __future__ import annotations

from typing import Iterable, Mapping

UNSTRATIFIED = "*"


def stratum_key(
    factor_codes: Iterable[str],
    levels: Mapping[str, str],
    *,
    site: str | None = None,
    cohort: str | None = None,
) -> str:
    parts = []
    if site is not None:
        parts.append(f"site={site}")
    if cohort:
        parts.append(f"cohort={cohort}")
    parts.extend(f"{code}={levels[code]}" for code in factor_codes)
    return "|".join(parts) or UNSTRATIFIED


def parse_key(key: str) -> dict[str, str]:
    if key == UNSTRATIFIED:
        return {}
    return dict(part.split("=", 1) for part in key.split("|"))


def cap_matches(cap_key: str, stratum: Mapping[str, str]) -> bool:
    """Whether a cap such as ``SEX=F`` or ``SEX=F,AGE=GE65`` covers this stratum.

    ``stratum`` holds every attribute of the subject (factors, site, cohort) so
    caps may name any of them; ``total`` covers everybody.
    """
    if cap_key.strip() == "total":
        return True
    for condition in cap_key.split(","):
        name, _, value = condition.strip().partition("=")
        if stratum.get(name.strip()) != value.strip():
            return False
    return True
