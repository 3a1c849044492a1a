"""The names of floodwall's cookies, in one place: the gate reads them from raw headers, the routes set them."""

SESSION = "fw_session"  # a signed-in browser's session
DEVICE = "fw_device"  # a browser's signed device cookie (accounts/guard.py), path /auth
CONSOLE = "fw_console"  # the operator console's session, path /admin


def prefix(name: str) -> bytes:
    """`name=` as it starts the cookie's pair in a raw Cookie header."""
    return name.encode() + b"="
