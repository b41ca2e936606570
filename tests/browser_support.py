"""The web console in a real browser: Debian's Chromium driven by Playwright over a
real ``ivrs serve`` (gunicorn), with the example study loaded and passwords set.

Skipped, saying why, where Chromium or Playwright is missing (a newcomer's
machine); ``.ci/run`` installs both, so CI always runs these tests. axe-core,
the accessibility checker, comes from the npm registry into tests/browser
(``npm ci --prefix tests/browser``) and is loaded into each page checked.
"""

from __future__ import annotations

import re
import shutil
import time
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import pyotp
import pytest
from api_support import STUDY, stock
from conftest import fresh_database, is_postgres
from e2e import kill_server, start_server
from studyfiles import MRL_CSV, STUDY_YAML

from core.actors import ADMIN
from core.mrl import import_mrl
from core.study_loader import load_study
from core.web_accounts import set_password

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
AXE = Path(__file__).parent / "browser" / "node_modules" / "axe-core" / "axe.min.js"
PASSWORD = "correct horse battery staple"
TODAY = date(2026, 12, 1)
TOTP_LABEL = "6-digit code from your authenticator app"
_SECRET = re.compile(r"^[A-Z2-7]{16,}$")
_CHECKED_WITHIN = 5  # seconds from choosing a TOTP code to the server's check of it


def chromium_or_skip() -> None:
    pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed")
    if shutil.which("chromium") is None and not Path(CHROMIUM).exists():
        pytest.skip("Chromium is not installed (apt-get install chromium)")


@dataclass
class Console:
    url: str
    db: object
    # Each user's TOTP key, read off the enrolment page, and the last time step used:
    # a code is accepted once (core.web_login refuses a replay).
    totp_secrets: dict = field(default_factory=dict)
    last_steps: dict = field(default_factory=dict)

    def totp_code(self, user_code: str) -> str:
        """A code for a time step not used yet: the server accepts the step before,
        the current one and the next; if those are used up, wait for the next.
        "The step before" is taken as it will be a few seconds on, when the server
        checks the code: near a step's end, the one before would be too old."""
        while True:
            now, soon = int(time.time() // 30), int((time.time() + _CHECKED_WITHIN) // 30)
            step = max(soon - 1, self.last_steps.get(user_code, -1) + 1)
            if step <= now + 1:
                self.last_steps[user_code] = step
                return pyotp.TOTP(self.totp_secrets[user_code]).at(step * 30)
            time.sleep(1)

    def sign_in(self, page, user_code: str, *, password: str = PASSWORD) -> None:
        """Sign in through the pages as a person would; a second factor is enrolled
        the first time (the key read off the enrolment page) and answered after."""
        page.goto(self.url + "/signin")
        page.get_by_label("User ID").fill(user_code)
        page.get_by_label("Password").fill(password)
        # Each submit waits for the page it leads to: the next step reads its URL
        # and DOM, and a slow server (PostgreSQL, two workers) must not race it.
        with page.expect_navigation():
            page.get_by_role("button", name="Sign in").click()
        if "/signin/enrol" in page.url:
            secret = page.locator("code.secret").inner_text().strip()
            assert _SECRET.match(secret), secret
            self.totp_secrets[user_code] = secret
            page.get_by_label(TOTP_LABEL).fill(self.totp_code(user_code))
            with page.expect_navigation():
                page.get_by_role("button", name="Confirm and sign in").click()
        elif "/signin/totp" in page.url:
            page.get_by_label(TOTP_LABEL).fill(self.totp_code(user_code))
            with page.expect_navigation():
                page.get_by_role("button", name="Sign in").click()
        if "/signin" in page.url:
            alerts = page.get_by_role("alert").all_inner_texts()
            raise AssertionError(f"{user_code} not signed in at {page.url}: {alerts}")


def serve_console(tmp_path_factory, *replacements, **env) -> tuple[object, object, callable]:
    """A database with the example study, every user's password set, and
    ``ivrs serve`` on it (two workers over Redis on PostgreSQL, one on SQLite)."""
    from studyfiles import write_study

    directory = tmp_path_factory.mktemp("console")
    db, cleanup = fresh_database(directory)
    load_study(db, write_study(directory, *replacements) if replacements else STUDY_YAML)
    import_mrl(db, MRL_CSV, study_code=STUDY)
    stock(db, directory / "kits.csv")
    for user_code in ("5001", "5002", "5003", "5004", "5005", "5006", "7001", "9001"):
        set_password(db, user_code=user_code, password=PASSWORD, actor=ADMIN)
    server = start_server(db.engine.url.render_as_string(hide_password=False), TODAY,
                          directory, workers=2 if is_postgres() else 1, IVRS_ENV="uat", **env)

    def stop():
        kill_server(server)
        cleanup()

    return db, server, stop


@pytest.fixture(scope="module")
def chromium():
    chromium_or_skip()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def console(tmp_path_factory, chromium):
    db, server, stop = serve_console(tmp_path_factory)
    yield Console(server.url, db)
    stop()


@pytest.fixture
def page(chromium):
    context = chromium.new_context(locale="en-US")
    tab = context.new_page()
    yield tab
    context.close()


def axe_violations(page) -> list[dict]:
    """axe-core's serious and critical violations on the page as it is now."""
    if not AXE.exists():
        pytest.skip("axe-core is not installed (npm ci --prefix tests/browser)")
    # Evaluated through the DevTools protocol: the console's CSP (script-src 'self')
    # rightly refuses an injected <script>, and must not be loosened for a test.
    page.evaluate(AXE.read_text(encoding="utf-8") + "\n;0")
    result = page.evaluate("async () => await axe.run(document, {resultTypes: ['violations']})")
    return [{"id": v["id"], "impact": v["impact"], "help": v["help"],
             "nodes": [n["target"] for n in v["nodes"]][:5]}
            for v in result["violations"] if v["impact"] in ("serious", "critical")]
