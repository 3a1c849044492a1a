"""Text from outside made inert: Unicode control, format and surrogate characters (Cc, Cf, Cs) are what
turn a string into terminal escapes, hidden text, a NUL PostgreSQL refuses, or UTF-8 that cannot be
written. One pass over the string, in C for the common case of none."""

from __future__ import annotations

import unicodedata

# controls, formats, surrogates, and the line and paragraph separators (U+2028, U+2029) that break lines
_ODD = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def has_controls(text: str) -> bool:
    """Whether `text` holds a control, format or surrogate character."""
    return not text.isprintable() and any(unicodedata.category(c) in _ODD for c in text)


def inert(text: str) -> str:
    """`text` with each control, format or surrogate character replaced by U+FFFD (it then matches nothing
    stored, and reaches no database or terminal as what it was)."""
    if text.isprintable():
        return text
    return "".join("\ufffd" if unicodedata.category(c) in _ODD else c for c in text)


def shown(text: str) -> str:
    """`text` for a terminal: control, format and surrogate characters written as escapes (\\x1b, \\u200b)."""
    if text.isprintable():
        return text
    return "".join((f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")
                   if unicodedata.category(c) in _ODD else c for c in text)


# ASCII that folding drops: whitespace and punctuation
_ASCII_DROP = str.maketrans("", "", "".join(chr(c) for c in range(128) if not chr(c).isalnum()))


def folded(text: str) -> str:
    """`text` as a person reads it, for finding a marker however it is spelt out: NFKC (full-width and other
    compatibility forms as their letters), case folded, and without separators, punctuation, controls or
    formats (spaces or zero-width characters between letters, "s-k l i v e"). ASCII in one C pass."""
    if text.isascii():
        return text.lower().translate(_ASCII_DROP)
    return "".join(c for c in unicodedata.normalize("NFKC", text).casefold()
                   if unicodedata.category(c)[0] not in "ZPC" and c != "\u034f")
