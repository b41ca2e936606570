"""Twilio webhooks (filled by the voice issue)."""
