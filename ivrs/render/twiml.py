"""Dialog turns -> TwiML, with the twilio library's builders.

The prompts go inside the ``<Gather>`` so that a caller who knows the menu can
key ahead without waiting for the prompt to end (barge-in). Silence comes
back to us (``actionOnEmptyResult``) so that the dialog can repeat the prompt
and count, instead of Twilio falling through to the end of the document.
"""

from __future__ import annotations

from twilio.twiml.voice_response import VoiceResponse

from dialogs.output import KEY, Say, Turn
from ivrs.render.speech import say_language, say_voice, spoken_language, text

GATHER_TIMEOUT = 6  # seconds of silence before the gather returns what it has


def voice_response(turn: Turn, language: str, action: str) -> str:
    response = VoiceResponse()
    if turn.gather and not turn.hangup:
        options = {"num_digits": 1} if turn.gather == KEY else {"finish_on_key": "#"}
        target = response.gather(input="dtmf", action=action, method="POST",
                                 timeout=GATHER_TIMEOUT, action_on_empty_result=True, **options)
    else:
        target = response
    for said_in, words in _spoken_runs(turn.says, language):
        target.say(words, language=say_language(said_in), voice=say_voice(said_in))
    if turn.hangup or not turn.gather:
        response.hangup()
    return str(response)


def apology(language: str = "en") -> str:
    """What a caller hears when something failed on our side: never a 500."""
    response = VoiceResponse()
    response.say(text(Say("apology"), language) or "Sorry.", language=say_language(language),
                 voice=say_voice(language))
    response.hangup()
    return str(response)


def _spoken_runs(says: tuple[Say, ...], language: str) -> list[tuple[str, str]]:
    """Consecutive prompts in one language become one <Say> (smoother speech)."""
    runs: list[tuple[str, list[str]]] = []
    for say in says:
        said_in = spoken_language(say.language or language)
        words = text(say, language)
        if not words:
            continue
        if runs and runs[-1][0] == said_in:
            runs[-1][1].append(words)
        else:
            runs.append((said_in, [words]))
    return [(lang, " ".join(parts)) for lang, parts in runs]
