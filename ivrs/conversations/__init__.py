"""The Twilio door's machinery behind ``webhooks.py``: a voice call's or an SMS
conversation's step through its dialog, and the session stores that carry a
conversation from one request to the next (Redis, or this process)."""
