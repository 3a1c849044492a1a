"""Accounts: users, sessions, API keys, the activity log and token usage, in SQLite or PostgreSQL."""
