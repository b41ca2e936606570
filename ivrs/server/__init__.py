"""``ivrs serve``: the configuration checked, then gunicorn (or Flask's development
server) with the sender and the daily job beside it."""
