"""Rendering for every channel: TwiML, speech and SMS text in the caller's language,
the catalogs and the message ids they hold, report files (CSV, Excel, PDF)."""
