#!/usr/bin/env python
"""Rendering cost of a prompt in each shipped language, against English with no catalog.

    python bench/bench_speech.py [--seconds S] [--no-write]

What a dialog step pays to turn its prompt ids into words: ``ivrs.render.speech.text``
for a mix of real prompts (a plain one, one with digits read one by one, one
with a plural count and a study term, one with a date, an SMS reply with a
list of kit numbers), catalogs loaded once per process as the server does.
The baseline, in the same run and process, is the least any renderer can do:
the English template already in a dict, ``str.format`` with the same values
already converted to text (no catalog, no lookup, no digit spacing). Each cell
is the median of five timed loops of ``--seconds`` / 5 each.

Results are printed and written into BENCHMARKS.md, section "Speech rendering"
(replaced on each run; other sections are kept).
"""

from __future__ import annotations

import argparse
import statistics
import time
from datetime import UTC, date, datetime
from pathlib import Path

from dialogs.output import Digits, Say, Term
from ivrs.render import speech

ROOT = Path(__file__).resolve().parent.parent
SECTION = "## Speech rendering"

PROMPTS = [
    Say("login.pin"),
    Say("kits.give", {"kit": Digits("100234"), "visit": Term("visit.V2")}),
    Say("dispense.due", {"visit": Term("visit.V2"), "count": 2}),
    Say("sms.status_next_visit", {"visit": "V2", "start": date(2026, 12, 18),
                                  "end": date(2026, 12, 24)}),
    Say("sms.kit_confirm_request", {"subject": "1010001", "visit": "V2",
                                    "kits": ["100234", "100235"]}),
]


def baseline(loops: int) -> float:
    """English templates in a dict and str.format: seconds per prompt."""
    english_catalog = speech.catalog("en")
    english = {say.id: (english_catalog.ngettext(say.id, say.id + ".plural", say.params["count"])
                        if "count" in say.params else english_catalog.gettext(say.id))
               for say in PROMPTS}
    plain = [(say.id, {k: (", ".join(v) if isinstance(v, list) else str(v))
                       for k, v in say.params.items()}) for say in PROMPTS]
    start = time.perf_counter()
    for _ in range(loops):
        for message_id, values in plain:
            english[message_id].format(**values)
    return (time.perf_counter() - start) / (loops * len(PROMPTS))


def rendered(language: str, loops: int) -> float:
    start = time.perf_counter()
    for _ in range(loops):
        for say in PROMPTS:
            speech.text(say, language)
    return (time.perf_counter() - start) / (loops * len(PROMPTS))


def timed(measure, seconds: float) -> float:
    """Median seconds per prompt over five loops sized to take ``seconds`` in all."""
    probe = measure(200)
    loops = max(200, int(seconds / 5 / max(probe * len(PROMPTS), 1e-9)))
    return statistics.median(measure(loops) for _ in range(5))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    languages = speech.available_languages()
    for language in languages:  # loaded once, as a server does at its first prompt
        speech.catalog(language)
    base = timed(baseline, args.seconds)
    rows = [(language, timed(lambda loops, lang=language: rendered(lang, loops), args.seconds))
            for language in languages]
    lines = [
        SECTION, "",
        "Produced by `bench/bench_speech.py` (see its docstring).", "",
        f"- Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        f"- Prompts: {', '.join(say.id for say in PROMPTS)} (in turn)",
        "- Baseline: the English template from a dict and `str.format` with the values "
        "already as text (no catalog, no lookup, no digit spacing, no date formatting)",
        "",
        "| language | µs per prompt | ÷ baseline |", "|---|---:|---:|",
        f"| baseline (English, no catalog) | {base * 1e6:.1f} | 1.0 |",
    ]
    lines += [f"| {language} | {cost * 1e6:.1f} | {cost / base:.1f} |"
              for language, cost in rows]
    worst = max(cost for _, cost in rows)
    lines += ["", f"The dearest language costs {worst * 1e6:.0f} µs a prompt: a dialog step "
              f"says one to four prompts, against about 1 ms of server CPU per step "
              f"(see \"Voice dialog\"), so rendering stays a small part of it.", ""]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        path = ROOT / "BENCHMARKS.md"
        current = path.read_text(encoding="utf-8")
        if SECTION in current:
            before, _, rest = current.partition(SECTION)
            following = rest.find("\n## ")
            after = rest[following + 1:] if following >= 0 else ""
            current = before + text + ("\n" + after if after else "")
        else:
            current = current.rstrip() + "\n\n" + text
        path.write_text(current, encoding="utf-8")
        print(f"written to {path}")


if __name__ == "__main__":
    main()
