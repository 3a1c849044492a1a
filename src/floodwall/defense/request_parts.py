"""Reading a request the way request scoring needs it: each part (path, arguments and their names, cookies,
headers...) decoded as an attacker would have the application decode it, and the anomalies of its form
(null bytes, broken encodings, a body on a GET, missing headers) named, so that rules can match them as data.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import html
import json
import re
import unicodedata
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl, unquote, unquote_to_bytes, urlsplit

import re2

from floodwall.bodies import whole_number

_XML_VALUES = re2.compile(r'="([^"]*)"|>([^<]+)<')
_BAD_PERCENT = re.compile(r"%(?![0-9a-fA-F]{2})")
_FULL_WIDTH = re.compile(r"%u[fF]{2}[0-9a-fA-F]{2}")
_CHARSET = re.compile(r"charset\s*=\s*[\"']?([^\"';,\s]+)", re.IGNORECASE)
_EVASION = re.compile(r"(?<=\w)(?:''|\"\"|['\"\\^])+(?=\w)|^['\"]+")
_SURROGATE = re.compile("[\ud800-\udfff]")
_JS_ESCAPE = re.compile(r"\\u([0-9a-fA-F]{4})|\\x([0-9a-fA-F]{2})")
_BASE64 = re.compile(r"[A-Za-z0-9+/]{12,4096}={0,2}")
_ENTITY = re.compile(r"&[a-zA-Z]{2,10};")
_RANGE = re.compile(r"(\d*)\s*-\s*(\d*)")
MAX_VALUE = 4096  # characters of one value read
MAX_VALUES = 256  # values read from one request part
MAX_BODY = 64 * 1024
MAX_RANGES = 5


@dataclasses.dataclass(frozen=True, slots=True)
class Described:
    """The parts of a request that are scored."""

    method: str
    path: str
    query: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    body: str = ""


def whole(value: str) -> str:
    """Surrogates (from \\ud83d escapes or JSON) paired into the characters they make, lone ones replaced:
    RE2 reads UTF-8, which has no room for them."""
    if value.isascii() or not _SURROGATE.search(value):
        return value
    return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def _decoded(value: str) -> str:
    value = value[:MAX_VALUE]
    for _ in range(2):  # double encoding is the oldest evasion
        if "%" not in value:
            break
        value = unquote(value)  # not unquote_plus: arguments come form-decoded, and %2B stays a plus
    if "&" in value:
        value = html.unescape(value)
    if "\\u" in value or "\\x" in value:  # JavaScript's escapes (c\u006fnsole, \x3cscript)
        value = _JS_ESCAPE.sub(lambda m: chr(int(m.group(1) or m.group(2), 16)), value)
        value = whole(value)
    if not value.isascii():  # full-width and compatibility forms read as what they look like
        value = unicodedata.normalize("NFKC", value)
    return value.replace("\x00", "")


def _leaves(value: Any, names: list[str], depth: int = 0) -> Iterator[str]:
    """The strings in a JSON document, its keys going to `names`."""
    if depth > 16:
        return
    if isinstance(value, dict):
        for key, item in value.items():
            names.append(str(key))
            yield from _leaves(item, names, depth + 1)
    elif isinstance(value, list):
        for item in value:
            yield from _leaves(item, names, depth + 1)
    elif isinstance(value, str):
        yield whole(value)
    elif value is not None and not isinstance(value, bool):
        yield str(value)


def _multipart(body: str, content_type: str, anomalies: set[str]) -> Iterator[tuple[str, str]]:
    """Each part's field name (and file name) and value; odd part headers and names go to `anomalies`."""
    at = content_type.lower().find("boundary=")
    boundary = content_type[at + len("boundary="):] if at >= 0 else ""
    boundary = boundary.split(";")[0].strip().strip('"')
    if not boundary:
        anomalies.add("multipart-no-boundary")
        return
    for part in body.split("--" + boundary)[:MAX_VALUES]:
        head, _, value = part.replace("\r\n", "\n").partition("\n\n")
        for line in head.strip("\n").split("\n"):
            name, colon, _ = line.partition(":")
            name = name.strip().lower()
            if colon and name not in ("content-disposition", "content-type"):
                anomalies.add("multipart-part-header")  # Content-Transfer-Encoding and the like
            elif name == "content-type" and any(c.lower() not in _CHARSETS for c in _CHARSET.findall(line)):
                anomalies.add("multipart-charset")  # utf-7 and the like: markup a filter reads as text
        for field in ("name", "filename"):
            marker = f'{field}="'
            at = head.find(marker)
            if at >= 0 and (field != "name" or head[at - 4:at] != "file"):
                found = head[at + len(marker):].split('"')[0]
                if any(c in _ENTITY.sub("", found) for c in ";=\"'"):  # á is not an odd character
                    anomalies.add("multipart-odd-name")
                value = value.rstrip("\n-")
                if field == "name" and found == "_charset_" and value.strip().lower() not in _CHARSETS:
                    anomalies.add("multipart-charset")
                yield found, value


_CHARSETS = frozenset({"utf-8", "iso-8859-1", "iso-8859-15", "windows-1252", "us-ascii"})


def _anomalies(request: Described, headers: dict[str, str], found: set[str]) -> None:
    """What is wrong with the request's form, by name: the `anomalies` target."""
    raw = request.path + "?" + request.query
    if "%00" in raw or "\x00" in raw or any("%00" in v or "\x00" in v for v in headers.values()):
        found.add("null-byte")
    if _BAD_PERCENT.search(raw):
        found.add("invalid-percent-encoding")
    if _FULL_WIDTH.search(raw):
        found.add("full-width-unicode")
    try:
        unquote_to_bytes(request.query.replace("+", " ")).decode("utf-8")
    except UnicodeDecodeError:
        found.add("invalid-utf8")
    method = request.method.upper()
    length = headers.get("content-length")
    if method in ("GET", "HEAD") and ((whole_number(length) or 0) > 0 if length else request.body):
        found.add("body-on-get")
    elif request.body and "content-type" not in headers and "content-length" in headers:
        found.add("body-without-type")  # a body the filter does not parse, and the application may
    for name in ("host", "accept", "user-agent"):
        if name not in headers:
            found.add(f"missing-{name}")
        elif not headers[name].strip():
            found.add(f"empty-{name}")
    referer = headers.get("referer")
    if referer is None:
        found.add("referer-elsewhere")  # none, or another site's: a link someone was sent
        found.add("no-referer")
    elif urlsplit(referer).netloc.lower() != headers.get("host", "").lower():
        found.add("referer-elsewhere")
        found.add("referer-offsite")
    for name in ("range", "request-range"):
        if name in headers:
            spans = _RANGE.findall(headers[name])
            if len(spans) > MAX_RANGES or any(a and b and int(a) > int(b) for a, b in spans):
                found.add("bad-range")


def parts(request: Described, wanted_headers: frozenset[str] = frozenset()) -> dict[str, list[str]]:
    """Each target's decoded values; `header:NAME` for each of `wanted_headers` the request carries."""
    names: list[str] = []
    args: list[str] = []
    for key, value in parse_qsl(request.query, keep_blank_values=True)[:MAX_VALUES]:
        names.append(key)
        args.append(value)
    headers = {name.lower(): value for name, value in request.headers}
    anomalies: set[str] = set()
    content_type = headers.get("content-type", "").lower()
    body = whole(request.body[:MAX_BODY])
    if body:
        if "json" in content_type:
            try:
                args.extend(_leaves(json.loads(body), names))
            except ValueError:
                args.append(body)
        elif "multipart/form-data" in content_type:
            for name, value in _multipart(body, headers.get("content-type", ""), anomalies):  # boundary: as sent
                names.append(name)
                args.append(value)
        elif "xml" in content_type or body.lstrip()[:1] == "<":
            args.extend(a or b for a, b in _XML_VALUES.findall(body)[:MAX_VALUES])  # attribute values, text
        elif "x-www-form-urlencoded" in content_type or not content_type:
            for key, value in parse_qsl(body, keep_blank_values=True)[:MAX_VALUES]:
                names.append(key)
                args.append(value)
        else:  # text/plain and the like: the body is one value
            args.append(body)
    cookies: list[str] = []
    cookie_names: list[str] = []
    for part in headers.get("cookie", "").split(";")[:MAX_VALUES]:
        key, _, value = part.strip().partition("=")
        cookie_names.append(key)
        cookies.append(value)
    found = {
        "method": [request.method.lower()],
        "path": [unquote(request.path)],
        "args": (decoded_args := [_decoded(v) for v in args[:MAX_VALUES]]),
        # shells drop quotes, backslashes and carets inside a word (ti''me, c\\at, w^ho^ami): the values as a
        # shell reads them, only where that changes them (CRS's t:cmdLine, in part)
        "commands": [c for v in decoded_args if (c := _EVASION.sub("", v)) != v],
        # values sent as base64 that decode to text (CRS's t:base64Decode): code hidden from the other rules
        "base64": [text for v in decoded_args if (text := _base64_text(v))],
        "names": [_decoded(v) for v in names[:MAX_VALUES]],
        "cookies": [_decoded(v) for v in cookies],
        "cookie-names": [_decoded(v) for v in cookie_names],
        "headers": [_decoded(v) for k, v in request.headers if k.lower() not in ("cookie", "user-agent")],
        "agent": [_decoded(headers.get("user-agent", ""))],
        "referer": [_decoded(headers.get("referer", ""))] if "referer" in headers else [],
        "body": [body] if body else [],
        "header-names": list(headers),
        "extension": [_extension(request.path)],
        "charset": _CHARSET.findall(headers.get("content-type", "")),
    }
    found["path"].append(_decoded(request.path))
    for name in wanted_headers:
        if name in headers:
            found[f"header:{name}"] = [headers[name]]
    _anomalies(request, headers, anomalies)
    found["anomalies"] = sorted(anomalies)
    return found


def _base64_text(value: str) -> str:
    """The text a base64 value stands for, decoded as the other values are ('' if it is not text)."""
    if not _BASE64.fullmatch(value):
        return ""
    try:
        text = base64.b64decode(value + "=" * (-len(value) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError):
        return ""
    return _decoded(text) if text.isprintable() or text.strip().isprintable() else ""


def _extension(path: str) -> str:
    """The last path segment's extension, lower case, with its dot ("" when it has none)."""
    name = unquote(path).rsplit("/", 1)[-1]
    return "." + name.rsplit(".", 1)[1].lower() if "." in name[1:] else ""


