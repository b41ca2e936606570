"""Text on its way out, made safe for the medium it goes to: the one function
every text passes before it reaches TwiML, an SMS, an e-mail, a report file or
(later) HTML.

What a user typed can come back to them or to others (``LANG`` echoes its
argument, a reason typed by SMS reaches a report), so the characters a medium
cannot carry are removed here, once, rather than trusted to each writer:

- ``xml`` (TwiML, HTML, ODM): the characters XML 1.0 forbids (C0 controls but
  tab, newline and carriage return; U+FFFE, U+FFFF; lone surrogates): a
  document with one of them does not parse, and Twilio would deliver nothing;
- ``sms``: ``xml``'s, every other control character but the newline, and the
  bidirectional embedding, override and isolate controls (U+202A-U+202E,
  U+2066-U+2069), which reorder what a phone shows (the marks U+200E/U+200F,
  which right-to-left text needs, stay);
- ``email`` (a plain-text e-mail's body and subject): ``sms``'s, for the same
  reasons (a mail client shows what a phone shows); a subject is one line, its
  newlines are the e-mail sender's business;
- ``table`` (CSV, Excel, PDF cells): ``xml``'s (Excel files are XML). A cell
  that looks like a formula is the Excel writer's business: it writes text.

Escaping (``<``, ``&``) is the XML builders' job; this removes what no escaping
can carry.
"""

from __future__ import annotations

import re

_XML_ILLEGAL = "\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff\ud800-\udfff"
_CONTROLS = "\x09\x0d\x7f-\x9f"  # besides XML's: tab, carriage return, DEL and C1
_BIDI = "\u202a-\u202e\u2066-\u2069"

_MARKUP = re.compile(f"[{_XML_ILLEGAL}]")
_SCREEN = re.compile(f"[{_XML_ILLEGAL}{_CONTROLS}{_BIDI}]")  # what a phone or mail client shows
_REMOVE = {"xml": _MARKUP, "sms": _SCREEN, "email": _SCREEN, "table": _MARKUP}
MEDIA = frozenset(_REMOVE)


def for_medium(text: str, medium: str) -> str:
    """``text`` without the characters ``medium`` cannot carry."""
    return _REMOVE[medium].sub("", text)
