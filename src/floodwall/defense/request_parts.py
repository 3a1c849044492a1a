"""Reading a request the way request scoring needs it: each part (path, arguments and their names, cookies,
headers...) decoded as an attacker would have the application decode it, and the anomalies of its form
(null bytes, broken encodings, a body on a GET, missing headers) named, so that rules can match them as data.
"""

from __future__ import annotations

import base64
import binascii
import html
import itertools
import math
import time
import unicodedata
import zlib
from collections.abc import Callable, Iterable
from urllib.parse import urlsplit

import re2

from floodwall.bodies import whole_number
from floodwall.inspection import Described
from floodwall.percent import bad_percent, unquoted, unquoted_bytes

# Attacker bytes are matched by RE2 (no backtracking: time linear in the value) or by plain string methods,
# on values cut to the caps below first; Python's `re` is not used on the request path (ruff bans it). The
# RE2 binding spends some 10 µs of Python per match found, so a pattern that can match many times in one
# value is searched once (is there one?) or iterated a bounded number of times, never findall'd whole.
_FULL_WIDTH = re2.compile(r"%u[fF]{2}[0-9a-fA-F]{2}")
_CHARSET = re2.compile(r"(?i)charset\s*=\s*[\"']?([^\"';,\s]+)")
_HEX = frozenset("0123456789abcdefABCDEF")
# deleting the base64 alphabet leaves nothing of a base64 value: one C pass instead of a pattern
_BASE64_ALPHABET = str.maketrans("", "", "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")
_SHELL_QUOTES = str.maketrans({"'": "\0", '"': "\0", "\\": "\0", "^": "\0"})
MAX_CHARSETS = 4  # charset parameters read from one header
# characters of one value read: scoring's sets match a value whole, and a value crafted to make RE2 build new
# states costs up to 5 µs a character (bench/adversarial.py); longer values are flagged (value-too-long). The
# CRS regression tests (paranoia 1) and the payload lists are detected alike at 512 and 4,096 (bench/probes.py)
MAX_VALUE = 512
MAX_VALUES = 256  # values read from one request part
MAX_DIGESTED = 64 * 1024  # of what a cap leaves unread, the part its digest covers
MAX_RANGES = 5
MAX_RANGE_DIGITS = 18  # a byte offset past 10**18 is no file's: the range is odd, not a number to convert


def whole(value: str) -> str:
    """Surrogates (from \\ud83d escapes or JSON) paired into the characters they make, lone ones replaced:
    RE2 reads UTF-8, which has no room for them."""
    if value.isascii():
        return value
    try:
        value.encode("utf-8")  # linear, in C: raises on the first surrogate
    except UnicodeEncodeError:
        return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return value


def _decoded(value: str) -> str:
    value = value[:MAX_VALUE]
    for _ in range(2):  # double encoding is the oldest evasion
        if "%" not in value:
            break
        value = unquoted(value)  # not unquote_plus: arguments come form-decoded, and %2B stays a plus
    if "&" in value:
        value = html.unescape(value)
    if "\\u" in value or "\\x" in value:  # JavaScript's escapes (c\u006fnsole, \x3cscript)
        value = whole(_js_unescaped(value))
    if not value.isascii():  # full-width and compatibility forms read as what they look like
        value = unicodedata.normalize("NFKC", value)
    return value.replace("\x00", "")


def _js_unescaped(value: str) -> str:
    """\\uXXXX and \\xXX made the characters they name (what `\\\\u([0-9a-fA-F]{4})|\\\\x([0-9a-fA-F]{2})` replaced),
    by splitting at backslashes: linear, and cheap per escape."""
    pieces = value.split("\\")
    out = [pieces[0]]
    for piece in pieces[1:]:
        width = 4 if piece[:1] == "u" else 2 if piece[:1] == "x" else 0
        digits = piece[1:1 + width]
        if width and len(digits) == width and all(c in _HEX for c in digits):
            out.append(chr(int(digits, 16)) + piece[1 + width:])
        else:
            out.append("\\" + piece)
    return "".join(out)


def _charsets(text: str) -> list[str]:
    if "=" not in text:  # an RE2 call costs 2-3 µs from Python even when nothing matches
        return []
    return [m.group(1) for m in itertools.islice(_CHARSET.finditer(text[:MAX_VALUE]), MAX_CHARSETS)]


def _anomalies(request: Described, headers: dict[str, str], found: set[str]) -> None:
    """What is wrong with the request's form, by name: the `anomalies` target."""
    raw = request.path + "?" + request.query
    if "%00" in raw or "\x00" in raw or any("%00" in v or "\x00" in v for v in headers.values()):
        found.add("null-byte")
    if "%" in raw and bad_percent(raw):
        found.add("invalid-percent-encoding")
    if "%u" in raw and _FULL_WIDTH.search(raw):
        found.add("full-width-unicode")
    try:
        unquoted_bytes(request.query[:4 * MAX_VALUE]).decode("utf-8")
    except UnicodeDecodeError:
        found.add("invalid-utf8")
    method = request.method.upper()
    length = headers.get("content-length")
    has_body = (whole_number(length) or 0) > 0 if length else "transfer-encoding" in headers
    if method in ("GET", "HEAD") and has_body:
        found.add("body-on-get")
    elif has_body and "content-type" not in headers and length:
        found.add("body-without-type")  # a body no parser reads as the client meant, and the application may
    for name in ("host", "accept", "user-agent"):
        if name not in headers:
            found.add(f"missing-{name}")
        elif not headers[name].strip():
            found.add(f"empty-{name}")
    referer = headers.get("referer")
    if referer is None:
        found.add("referer-elsewhere")  # none, or another site's: a link someone was sent
        found.add("no-referer")
    elif _netloc(referer) != headers.get("host", "").lower():
        found.add("referer-elsewhere")
        found.add("referer-offsite")
    for name in ("range", "request-range"):
        if name in headers and _odd_range(headers[name]):
            found.add("bad-range")


def _netloc(url: str) -> str | None:
    """A URL's host and port, lower case (None when it is not a URL urllib can split, like "http://[")."""
    try:
        return urlsplit(url[:MAX_VALUE]).netloc.lower()
    except ValueError:
        return None


def cut(kind: str, text: str) -> str:
    """An anomaly for what was not read, named with a digest of it: the same big cookie sent with every page
    is one piece of evidence to the probe watch, a scanner's padded payloads are many."""
    return f"{kind}:{zlib.crc32(text.encode('utf-8', 'surrogatepass')):08x}"


def _capped(values: list[str], kind: str, anomalies: set[str]) -> list[str]:
    """The first MAX_VALUES of `values`; more, or one longer than MAX_VALUE, is an anomaly (CRS's 920380 and
    920370: too many arguments, an argument too long), named by a digest of all of it, so padding cannot hide
    a payload unflagged, nor make different payloads one piece of evidence. (floodwall's own values are far
    shorter: its device cookie is at most some 300 characters.)"""
    if len(values) > MAX_VALUES:
        anomalies.add(cut("too-many-values", kind + "".join(values[MAX_VALUES:])[:MAX_DIGESTED]))
        values = values[:MAX_VALUES]
    for value in values:
        if len(value) > MAX_VALUE:
            anomalies.add(cut("value-too-long", kind + value[:MAX_DIGESTED]))
    return values


class Budget:
    """An allowance of this thread's CPU time. The wall clock is read first (80 ns); only once it has passed
    the allowance is the CPU clock asked (a system call, about 2 µs), since CPU time never runs ahead of wall
    time. So a machine that preempts the worker does not cut reading short, and a calm request pays for one
    CPU clock read."""

    __slots__ = ("cpu", "seconds", "wall")

    def __init__(self, seconds: float = math.inf) -> None:
        self.seconds = seconds
        self.wall = time.perf_counter()
        self.cpu = time.thread_time() if seconds != math.inf else 0.0

    def spent(self) -> bool:
        return time.perf_counter() - self.wall > self.seconds and time.thread_time() - self.cpu > self.seconds


def _pairs(text: str, budget: Budget, anomalies: set[str]) -> list[tuple[str, str]]:
    """The first MAX_VALUES name=value pairs, decoded as parse_qsl(keep_blank_values=True) would, each cut to
    MAX_VALUE first, while the budget lasts (parse_qsl reads them all before any slice, at Python's pace)."""
    found: list[tuple[str, str]] = []
    for pair in _capped([pair for pair in text.split("&") if pair], "args", anomalies):
        if clock_due(len(found), len(pair)) and budget.spent():
            break
        name, _, value = pair.partition("=")
        found.append((unquoted(name[:MAX_VALUE].replace("+", " ")), unquoted(value[:MAX_VALUE].replace("+", " "))))
    return found


def _each(transform: Callable[[str], str], values: Iterable[str], budget: Budget) -> list[str]:
    """`transform` of each value (at most MAX_VALUES) while the budget lasts: past it, the rest are not read."""
    found: list[str] = []
    for value in itertools.islice(values, MAX_VALUES):
        if clock_due(len(found), len(value)) and budget.spent():
            break
        found.append(transform(value))
    return found


def clock_due(count: int, length: int) -> bool:
    """Whether to look at the budget before this value: every 8th short one, and before any other (asking
    costs a wall clock read, 80 ns, until the budget's time has passed)."""
    return not count & 7 or length > 64


def parts(request: Described, wanted_headers: frozenset[str] = frozenset(),
          budget: Budget | None = None) -> dict[str, list[str]]:
    """Each target's decoded values; `header:NAME` for each of `wanted_headers` the request carries. Values
    are decoded while `budget` lasts; the caller tells a cut by asking it."""
    budget = budget or Budget()
    names: list[str] = []
    args: list[str] = []
    anomalies: set[str] = set()
    for key, value in _pairs(request.query, budget, anomalies):
        names.append(key)
        args.append(value)
    # a header sent twice is read whole: the cookie headers joined as HTTP/2 splits them, others as RFC 9110
    # combines them, so a second Cookie or User-Agent line cannot hide the first from the rules
    headers: dict[str, str] = {}
    for name, value in request.headers:
        key = name.lower()
        headers[key] = f"{headers[key]}{'; ' if key == 'cookie' else ', '}{value}" if key in headers else value
    if len(request.headers) > MAX_VALUES or any(len(value) > MAX_VALUE for _, value in request.headers):
        _capped([f"{name.lower()}={value}" for name, value in request.headers if name.lower() != "cookie"],
                "headers", anomalies)
    if len(request.path) > MAX_VALUE:
        _capped([request.path], "path", anomalies)
    cookies: list[str] = []
    cookie_names: list[str] = []
    for part in _capped(headers.get("cookie", "").split(";"), "cookies", anomalies):
        key, _, value = part.strip().partition("=")
        cookie_names.append(key)
        cookies.append(value)
    found = {
        "method": [request.method.lower()],
        "path": [unquoted(request.path[:MAX_VALUE])],
        "args": (decoded_args := _each(_decoded, args, budget)),
        # shells drop quotes, backslashes and carets inside a word (ti''me, c\\at, w^ho^ami): the values as a
        # shell reads them, only where that changes them (CRS's t:cmdLine, in part)
        "commands": [c for v, c in zip(decoded_args, _each(shell_words, decoded_args, budget), strict=False)
                     if c != v],
        # values sent as base64 that decode to text (CRS's t:base64Decode): code hidden from the other rules
        "base64": [text for text in _each(_base64_text, decoded_args, budget) if text],
        "names": _each(_decoded, names, budget),
        "cookies": _each(_decoded, cookies, budget),
        "cookie-names": _each(_decoded, cookie_names, budget),
        "headers": _each(_decoded, (v for k, v in request.headers if k.lower() not in ("cookie", "user-agent")),
                         budget),
        "agent": [_decoded(headers.get("user-agent", ""))],
        "referer": [_decoded(headers.get("referer", ""))] if "referer" in headers else [],
        "header-names": list(headers),
        "extension": [_extension(request.path)],
        "charset": _charsets(headers.get("content-type", "")),
    }
    found["path"].append(_decoded(request.path))
    for name in wanted_headers:
        if name in headers:
            found[f"header:{name}"] = [headers[name]]
    _anomalies(request, headers, anomalies)
    found["anomalies"] = sorted(anomalies)
    return found


def shell_words(value: str) -> str:
    """The value with the quotes, backslashes and carets a shell drops inside a word removed (a run of them
    between two word characters), and its leading quotes: what `(?<=\\w)['"\\\\^]+(?=\\w)|^['"]+` would remove,
    found by one RE2 scan for the runs and a look at the character on each side."""
    if not any(c in value for c in "'\"\\^"):
        return value
    rest = value.lstrip("'\"")
    if "\0" in rest:  # NUL marks the quotes below (decoded values have none)
        rest = rest.replace("\0", "")
    # the text between the quote characters: a run of k of them leaves k - 1 empty pieces
    pieces = rest.translate(_SHELL_QUOTES).split("\0")
    out = [pieces[0]]
    at = len(pieces[0])  # where, in `rest`, the run being read starts
    i, last = 1, len(pieces) - 1
    while i <= last:
        j = i
        while j < last and not pieces[j]:
            j += 1
        run, before, after = j - i + 1, pieces[i - 1], pieces[j]
        if not (before and after and _word(before[-1]) and _word(after[0])):
            out.append(rest[at:at + run])  # not inside a word: kept as sent
        out.append(after)
        at += run + len(after)
        i = j + 1
    return "".join(out)


def _word(char: str) -> bool:
    return char.isalnum() or char == "_"  # what Python's \\w matches


def _odd_range(value: str) -> bool:
    """A Range header longer than a value, with more than MAX_RANGES ranges, a range that ends before it
    starts, or an offset too long to be one: read with string methods, at most MAX_RANGES + 1 pieces."""
    if len(value) > MAX_VALUE:
        return True
    ranges = value.rpartition("=")[2]
    if ranges.count("-") > MAX_RANGES:
        return True
    pieces = ranges.split(",", MAX_RANGES)
    for piece in pieces:
        first, dash, last = piece.partition("-")
        first, last = first.strip(), last.strip()
        if not dash:
            continue
        if len(first) > MAX_RANGE_DIGITS or len(last) > MAX_RANGE_DIGITS:
            return True
        if first.isdigit() and last.isdigit() and first.isascii() and last.isascii() and int(first) > int(last):
            return True
    return False


def _base64_text(value: str) -> str:
    """The text a base64 value stands for, decoded as the other values are ('' if it is not text)."""
    core = value.rstrip("=")
    if not 12 <= len(core) <= MAX_VALUE or len(value) - len(core) > 2 or core.translate(_BASE64_ALPHABET):
        return ""
    try:
        text = base64.b64decode(value + "=" * (-len(value) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError):
        return ""
    return _decoded(text) if text.isprintable() or text.strip().isprintable() else ""


def _extension(path: str) -> str:
    """The last path segment's extension, lower case, with its dot ("" when it has none)."""
    name = unquoted(path[:MAX_VALUE]).rsplit("/", 1)[-1]
    return "." + name.rsplit(".", 1)[1].lower() if "." in name[1:] else ""


