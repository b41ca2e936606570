"""The demo and the phone in the terminal: clients of the Twilio door that drive
its webhook routes in this process or over HTTP, exactly as Twilio does."""
