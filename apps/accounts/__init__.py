"""Users, API keys, session and API-key authentication, login lockout."""
