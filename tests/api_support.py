"""The HTTP API under test: the example study with kits at its sites, an API
client per role, and a small JSON client over Flask's test client."""

from __future__ import annotations

import csv
import itertools
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import pytest
from conftest import loaded
from studyfiles import MRL_CSV, STUDY_YAML, write_study

from core.actors import ADMIN
from core.api_clients import add_client
from core.mrl import import_mrl
from core.study_loader import load_study
from core.supply.kit_import import import_kits
from ivrs.app import create_app
from ivrs.config import Settings
from ivrs.conversations.sessions import MemorySessionStore

STUDY = "ABC-301"
EXPIRY = date(2031, 6, 30)
# name -> (role, sites): the clients every API test has
CLIENTS = {
    "edc-101": ("site_coordinator", ["101"]),
    "edc-inv-101": ("investigator", ["101"]),
    "edc-all": ("investigator", []),
    "pharmacy-102": ("pharmacist", ["102"]),
    "ctms": ("project_manager", []),
    "depot": ("depot_manager", []),
    "stats": ("unblinded_statistician", []),
}


def stock(db, path: Path, sites=("101", "102", "103", "90"), per_type: int = 20) -> None:
    """``per_type`` kits of each kit type at each site and at the depot (90)."""
    numbers = itertools.count(600001)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["kit_number", "kit_type", "lot", "expiry_date", "location"])
        for site in sites:
            for kit_type, lot in (("KA", "LA1"), ("KP", "LP1")):
                for _ in range(per_type):
                    writer.writerow([next(numbers), kit_type, lot, EXPIRY.isoformat(), site])
    import_kits(db, path, study_code=STUDY)


@dataclass
class ApiClient:
    http: object
    token: str

    def _headers(self, key: str | None, headers: dict | None) -> dict:
        sent = {"Authorization": f"Bearer {self.token}"}
        if key is not None:
            sent["Idempotency-Key"] = key
        return {**sent, **(headers or {})}

    def get(self, path: str, **kwargs):
        return self.http.get("/api/v1" + path, headers=self._headers(None, None), **kwargs)

    def post(self, path: str, body=None, *, key: str | None = None, headers=None, **kwargs):
        return self.http.post("/api/v1" + path, json=body,
                              headers=self._headers(key, headers), **kwargs)


@dataclass
class Api:
    db: object
    app: object
    tokens: dict[str, str]

    def client(self, name: str) -> ApiClient:
        return ApiClient(self.app.test_client(), self.tokens[name])


def make_api(db, tmp_path: Path, *replacements: tuple[str, str]) -> Api:
    """The API over the example study, with ``replacements`` made in its file."""

    def load(db, directory: Path) -> dict[str, str]:
        load_study(db, write_study(directory, *replacements) if replacements else STUDY_YAML)
        import_mrl(db, MRL_CSV, study_code=STUDY)
        stock(db, directory / "kits.csv")
        return {name: add_client(db, name=name, role=role, sites=sites, actor=ADMIN).token
                for name, (role, sites) in CLIENTS.items()}

    tokens = loaded(db, tmp_path, ("api", replacements), load)
    app = create_app(Settings(database_url="unused"), db=db, store=MemorySessionStore())
    return Api(db, app, tokens)


@pytest.fixture
def api(db, tmp_path):
    return make_api(db, tmp_path)


EDC_ELIGIBILITY = ("  method: list\n", "  method: list\n  eligibility_source: edc\n")


@pytest.fixture
def edc_api(db, tmp_path):
    """The example study with its eligibility recorded by the EDC."""
    return make_api(db, tmp_path, EDC_ELIGIBILITY)
