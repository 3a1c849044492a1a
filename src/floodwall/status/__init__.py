"""The public status page: components, incidents with their timelines, Statuspage-compatible JSON, Atom."""
