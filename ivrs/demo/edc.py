"""The demo's EDC: an electronic data capture system that screens and randomizes
a subject through the HTTP API (SPEC §10), as an eCRF's "randomize" button would.

It is an API client of the site coordinator's role at one site, made with the
same service as ``ivrs api-clients add``, and it speaks JSON to ``/api/v1`` of
the app in this process. What it prints is what the EDC sends and gets back:
blinded, like every answer to a blinded client.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable

from core.actors import ADMIN
from core.api_clients import add_client


class DemoEdc:
    def __init__(self, app, db, echo: Callable[[str], None], *, site: str,
                 study: str) -> None:
        made = add_client(db, name="demo-edc", role="site_coordinator", sites=[site],
                          actor=ADMIN, study=study)
        self.http, self.token, self.echo = app.test_client(), made.token, echo
        echo(f"[ivrs api-clients add demo-edc --role site_coordinator --site {site}: "
             f"token {made.token[:12]}...]")

    def post(self, path: str, body: dict) -> dict:
        self.echo(f"edc> POST /api/v1{path} {json.dumps(body)}")
        answer = self.http.post(f"/api/v1{path}", json=body, headers={
            "Authorization": f"Bearer {self.token}",
            # a retry of this request after a lost answer would act once
            "Idempotency-Key": secrets.token_hex(8)})
        self.echo(f"ivrs> {answer.status_code} {answer.get_data(as_text=True)}")
        return answer.get_json()

    def get(self, path: str) -> dict:
        self.echo(f"edc> GET /api/v1{path}")
        answer = self.http.get(f"/api/v1{path}",
                               headers={"Authorization": f"Bearer {self.token}"})
        self.echo(f"ivrs> {answer.status_code} {answer.get_data(as_text=True)}")
        return answer.get_json()
