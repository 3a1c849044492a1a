"""The names of floodwall's cookies, in one place: the gate reads them from raw headers, the routes set them."""

SESSION = "fw_session"  # a signed-in browser's session
DEVICE = "fw_device"  # a browser's signed device cookie (accounts/guard.py), path /auth
CONSOLE = "fw_console"  # the operator console's session, path /admin


def session(https: bool) -> str:
    """The session cookie's name: behind an https public URL with the __Host- prefix, which a browser keeps
    only for a Secure cookie of this host and path / (a sibling subdomain or plain HTTP cannot plant one)."""
    return "__Host-" + SESSION if https else SESSION


def prefix(name: str) -> bytes:
    """`name=` as it starts the cookie's pair in a raw Cookie header."""
    return name.encode() + b"="
