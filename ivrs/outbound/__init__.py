"""What leaves the system on its own: the outbox senders (SMS through Twilio's REST
API with its delivery status callbacks, e-mail through an SMTP server) and the
scheduler of the daily jobs."""
