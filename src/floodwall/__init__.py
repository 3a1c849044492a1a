"""floodwall: the front door of an AI model service, keeping established users served under attack."""

__version__ = "0.1.0"
