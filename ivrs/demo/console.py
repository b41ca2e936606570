"""``ivrs demo --serve``: the web console on the demo study, ready to sign in to.

The demo users get web passwords (printed, as their PINs are in the demo study
file: this is a demo), and this process becomes ``ivrs serve`` on the demo
database, in UAT so that the browser softphone is there, with a Twilio token
made up for this run so that the softphone's requests pass the same signature
check as Twilio's.
"""

from __future__ import annotations

import os
import secrets
import sys
from collections.abc import Callable

from core.actors import ADMIN
from core.db import Database
from core.web_accounts import set_password

# (user ID, role as the README names it): a site's user and a sponsor's, who signs
# in with a second factor (the first sign-in shows the QR code to scan).
DEMO_WEB_USERS = (("5001", "site coordinator, site 101"),
                  ("5002", "investigator, site 102"),
                  ("6050", "project manager (second factor: scan the QR code at first sign-in)"),
                  ("7001", "depot manager (second factor too)"),
                  ("5004", "unblinded statistician (second factor too)"))
DEMO_PASSWORD = "demo-password-{user}"


def serve_console(db: Database, *, host: str, port: int, echo: Callable[[str], None]) -> None:
    for user_code, _role in DEMO_WEB_USERS:
        set_password(db, user_code=user_code, password=DEMO_PASSWORD.format(user=user_code),
                     actor=ADMIN)
    url = f"http://{host}:{port}/"
    echo("")
    echo(f"== the web console: {url}")
    for user_code, role in DEMO_WEB_USERS:
        echo(f"   user ID {user_code}, password {DEMO_PASSWORD.format(user=user_code)}: {role}")
    echo("   (the softphone page plays the real phone dialog in the browser)")
    echo("   Ctrl-C stops the server.")
    database_url = db.engine.url.render_as_string(hide_password=False)
    db.dispose()
    env = {**os.environ, "DATABASE_URL": database_url, "IVRS_ENV": "uat",
           "TWILIO_AUTH_TOKEN": os.environ.get("TWILIO_AUTH_TOKEN") or secrets.token_hex(16),
           "IVRS_SUPPLY_AT": os.environ.get("IVRS_SUPPLY_AT", "off")}
    env.pop("REDIS_URL", None)  # one worker, the in-process session store: the demo's way
    command = [sys.executable, "-c", "from ivrs.main import main; main()", "serve",
               "--host", host, "--port", str(port), "--workers", "1"]
    sys.stdout.flush()
    os.execve(sys.executable, command, env)
