"""The web console under test: the example study with kits at its sites and a
small browser over Flask's test client that keeps its cookie, reads the CSRF
token from the page like a browser's form would, and can be signed in as any
user of the study without typing a password (the sign-in itself is tested in
tests/test_web_sign_in_pages.py)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from api_support import STUDY, stock
from conftest import loaded
from sqlalchemy import select
from studyfiles import MRL_CSV, STUDY_YAML, write_study

from core.models import Study, User
from core.mrl import import_mrl
from core.study_loader import load_study
from ivrs.app import create_app
from ivrs.config import Settings
from ivrs.conversations.sessions import MemorySessionStore
from ivrs.web import sessions

_TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')
# The example study's users, by role.
USERS = {"site_coordinator": "5001", "investigator": "5002", "pharmacist": "5003",
         "unblinded_statistician": "5004", "investigator_102": "5005",
         "project_manager": "5006", "depot_manager": "7001", "admin": "9001"}


@dataclass
class Browser:
    http: object
    web: Web
    last_page: str = ""

    def get(self, path: str, **kwargs):
        answer = self.http.get(path, **kwargs)
        if answer.mimetype == "text/html":
            self.last_page = answer.get_data(as_text=True)
        return answer

    def token(self, page: str | None = None) -> str:
        """The CSRF token of the page last read (or of ``page``, read now)."""
        if page is not None:
            self.get(page)
        found = _TOKEN.search(self.last_page)
        if found is None:
            self.get("/signin")
            found = _TOKEN.search(self.last_page)
        return found.group(1)

    def post(self, path: str, data: dict | None = None, *, csrf: bool = True,
             form_page: str | None = None, **kwargs):
        """POST a form; with ``csrf`` the token a browser would send (read from
        ``form_page``, or the page last read)."""
        data = dict(data or {})
        if csrf:
            data.setdefault("csrf_token", self.token(form_page))
        answer = self.http.post(path, data=data, **kwargs)
        if answer.mimetype == "text/html":
            self.last_page = answer.get_data(as_text=True)
        return answer

    def text(self, answer) -> str:
        return answer.get_data(as_text=True)


@dataclass
class Web:
    db: object
    app: object
    store: MemorySessionStore

    def browser(self, user_code: str | None = None, *, language: str = "en") -> Browser:
        """A new browser; signed in as ``user_code`` when given, reading ``language``."""
        browser = Browser(self.app.test_client(), self)
        if user_code is not None:
            session_id = sessions.open_session(self.store, self.web_user(user_code), language)
            with browser.http.session_transaction() as cookie:
                cookie["sid"] = session_id
        return browser

    def as_role(self, role: str, **kwargs) -> Browser:
        return self.browser(USERS[role], **kwargs)

    def web_user(self, user_code: str) -> sessions.WebUser:
        with self.db.sessions() as session:
            study = session.scalars(select(Study)).one()
            user = session.scalars(select(User).where(User.user_code == user_code)).one()
            return sessions.WebUser(study=study.code, user_code=user.user_code, name=user.name,
                                    role=user.role,
                                    site_codes=tuple(site.code for site in user.sites),
                                    language=user.language)


def load_example(db, directory: Path, replacements: tuple[tuple[str, str], ...] = ()) -> None:
    """The example study (with ``replacements`` made in its file), its list, kits at its sites."""
    load_study(db, write_study(directory, *replacements) if replacements else STUDY_YAML)
    import_mrl(db, MRL_CSV, study_code=STUDY)
    stock(db, directory / "kits.csv")


def make_web(db, tmp_path, *replacements: tuple[str, str]) -> Web:
    loaded(db, tmp_path, ("example", replacements),
           lambda db, directory: load_example(db, directory, replacements))
    store = MemorySessionStore()
    app = create_app(Settings(database_url="unused"), db=db, store=store)
    return Web(db, app, store)


@pytest.fixture
def web(db, tmp_path):
    return make_web(db, tmp_path)
