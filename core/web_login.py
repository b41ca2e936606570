# TEMPORARY local shim until the signin branch lands; never committed.
from dataclasses import dataclass
@dataclass(frozen=True)
class WebSignIn:
    study: str; user_code: str; name: str; role: str; site_codes: tuple; language: str; second_factor: str
def sign_in_password(*a, **k): raise NotImplementedError
def new_totp_secret(): raise NotImplementedError
def totp_uri(*a, **k): raise NotImplementedError
def enrol_totp(*a, **k): raise NotImplementedError
def verify_totp(*a, **k): raise NotImplementedError
def invited_user(*a, **k): raise NotImplementedError
def redeem_invite(*a, **k): raise NotImplementedError
