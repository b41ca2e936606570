"""What leaves the system on its own: the outbox sender (SMS through Twilio's REST
API, delivery status callbacks) and the scheduler of the daily jobs."""
