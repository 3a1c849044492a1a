"""The web app: server-rendered pages for sign-up, log-in, chat, API keys and account activity."""
