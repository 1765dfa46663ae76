"""The flwr-flag ServerApp (``server_app.app:app``)."""
