"""The voice test harness: the demo study behind the Flask app, and signed phones."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

import pytest
from conftest import loaded
from werkzeug.serving import make_server

from core.db import Database
from ivrs.app import create_app
from ivrs.config import Settings
from ivrs.demo.scenario import set_up_demo_study
from ivrs.demo.phone import AppTransport, Heard, Phone
from ivrs.conversations.sessions import MemorySessionStore, SessionStore, store_for
from ivrs.demo.texter import Texter

TOKEN = "test-twilio-auth-token"
TODAY = "2026-11-23"
PARIS = "+33612345678"  # user 5001, site coordinator at site 101
BARCELONA = "+34612345678"  # user 5002, investigator at site 102
DEPOT = "+4930555001"  # user 7001, depot manager
UNKNOWN = "+15550001111"


@dataclass
class VoiceHarness:
    app: object
    db: Database
    store: SessionStore

    def phone(self, caller: str = PARIS, **kwargs) -> Phone:
        return Phone(AppTransport(self.app), caller=caller, auth_token=TOKEN, **kwargs)

    def texter(self, sender: str = PARIS) -> Texter:
        return Texter(AppTransport(self.app), sender=sender, auth_token=TOKEN)

    def signed_in(self, caller: str = PARIS, user: str = "5001", pin: str = "2468") -> Phone:
        """A phone at the main menu."""
        phone = self.phone(caller)
        heard = phone.dial()
        if heard.gather.get("numDigits") == "1":  # the language menu (a one-key prompt)
            phone.press("1")
        phone.press(f"{user}#")
        heard = phone.press(f"{pin}#")
        assert "press 1" in heard.text or "9." in heard.text, heard.text
        return phone


def demo_study_in_english(db: Database, workdir) -> None:
    """The demo study, its staff speaking English: the tests read English prompts
    (a test of another language sets a user's language itself). The study file
    gives them their own languages, which ``ivrs demo`` uses."""
    set_up_demo_study(db, workdir, lambda line: None, users_language="en")


def session_store() -> SessionStore:
    """Redis when the suite runs against servers (CI), else the in-process store."""
    if not os.environ.get("REDIS_URL"):
        return MemorySessionStore()
    store = store_for(os.environ["REDIS_URL"])
    # Texters' sessions are keyed by phone number, which every test reuses:
    # each test starts from an empty store (REDIS_URL is a database for tests).
    store._redis.flushdb()
    return store


@pytest.fixture
def voice(db, tmp_path, monkeypatch) -> VoiceHarness:
    monkeypatch.setenv("IVRS_TODAY", TODAY)
    loaded(db, tmp_path, ("demo", TODAY), demo_study_in_english)
    store = session_store()
    app = create_app(Settings(database_url="unused", twilio_auth_token=TOKEN), db=db,
                     store=store)
    return VoiceHarness(app, db, store)


def says(heard: Heard, *fragments: str) -> bool:
    return all(fragment in heard.text for fragment in fragments)


@pytest.fixture
def demo_env(db, database_env, tmp_path, monkeypatch):
    """The demo study in the test database, DATABASE_URL pointing at it, no Twilio
    settings, and no session left in the store (CLI commands build their own app,
    with Redis when REDIS_URL is set)."""
    monkeypatch.setenv("IVRS_TODAY", TODAY)
    for name in ("TWILIO_AUTH_TOKEN", "PUBLIC_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    loaded(db, tmp_path, ("demo", TODAY), demo_study_in_english)
    session_store()  # empties the test Redis database
    return db


@pytest.fixture
def server(demo_env):
    """The webhook app on a free port, answering in a thread, with its own token."""
    app = create_app(Settings(database_url="unused", twilio_auth_token="server-token"),
                     db=demo_env, store=session_store())
    http = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=http.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{http.server_port}"
    http.shutdown()
    http.server_close()
    thread.join(timeout=10)
