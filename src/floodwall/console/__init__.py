"""The operator's side: the admin API (and, with issue 7, the console pages)."""
