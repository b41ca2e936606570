"""Dialog turns -> TwiML, with the twilio library's builders: the only module that
builds TwiML, voice and SMS alike. Every text goes in through ``_say`` or
``_message``, which pass it through ``core.output_text.for_medium`` first (a test
reads this module to hold it so).

The prompts go inside the ``<Gather>`` so that a caller who knows the menu can
key ahead without waiting for the prompt to end (barge-in). Silence comes
back to us (``actionOnEmptyResult``) so that the dialog can repeat the prompt
and count, instead of Twilio falling through to the end of the document.
"""

from __future__ import annotations

from twilio.twiml.messaging_response import MessagingResponse
from twilio.twiml.voice_response import VoiceResponse

from core.output_text import for_medium
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
        _say(target, words, said_in)
    if turn.hangup or not turn.gather:
        response.hangup()
    return str(response)


def apology(language: str = "en") -> str:
    """What a caller hears when something failed on our side: never a 500."""
    return _said_and_hung_up(Say("apology"), language)


def not_understood(language: str = "en") -> str:
    """What a request hears whose fields cannot be Twilio's (a forged step token,
    keys no keypad sends): not an apology for a fault of ours."""
    return _said_and_hung_up(Say("not_understood"), language)


def _said_and_hung_up(say: Say, language: str) -> str:
    response = VoiceResponse()
    _say(response, text(say, language) or "Sorry.", language)
    response.hangup()
    return str(response)


def sms_response(words: str | None) -> str:
    """An SMS reply: one ``<Message>``, or none when ``words`` is empty."""
    response = MessagingResponse()
    if words:
        _message(response, words)
    return str(response)


def _say(target, words: str, language: str) -> None:
    target.say(for_medium(words, "xml"), language=say_language(language),
               voice=say_voice(language))


def _message(response: MessagingResponse, words: str) -> None:
    response.message(for_medium(words, "sms"))


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
