"""The one input boundary of the HTTP app: what every request passes before a channel sees it.

`BoundaryRequest` and `BoundaryJSONProvider` are installed on the app (`install`, from
channels/app.py), so every endpoint gets:
- JSON checked on the raw text before parsing: not UTF-8/16/32, nested deeper than MAX_JSON_DEPTH
  (the stdlib parser recurses: 50k levels was a RecursionError), NaN/Infinity, or numbers no
  store can hold are a clear 400, whether or not the endpoint asked for `silent`;
- every text that enters (JSON strings and keys, form values, query arguments) made valid (a lone
  surrogate or NUL becomes U+FFFD: OpenCC, SQLite and Postgres choke on them) and NFC-normalised
  once, so a name typed in decomposed form matches the stored one;
- non-UTF-8 bytes in a query string or a urlencoded form decoded, never a crash.
Body size stays werkzeug's MAX_CONTENT_LENGTH, enforced while reading, before any parsing.

Also the small guards shared by every endpoint: constant-time comparison on bytes and query numbers
that answer 400 instead of crashing (`hmac.compare_digest` raises TypeError on a non-ASCII str)."""
from __future__ import annotations

import hmac
import json
import math
import re
import unicodedata
from itertools import accumulate
from typing import Any
from urllib.parse import parse_qsl

import werkzeug.urls  # noqa: F401  registers the "werkzeug.url_quote" codec error handler
from flask import Request
from flask.json.provider import DefaultJSONProvider
from werkzeug.datastructures import ImmutableMultiDict, MultiDict
from werkzeug.exceptions import BadRequest
from werkzeug.formparser import FormDataParser
from werkzeug.utils import cached_property

from assistant.nlu.normalize import valid_text

MAX_JSON_DEPTH = 32
MAX_INT_DIGITS = 18  # below 2**63: a database integer column holds it

# A JSON string, escapes included; an unterminated one runs to the end (the parser refuses it
# anyway). Possessive quantifiers keep the scan linear on hostile input.
_JSON_STRING = re.compile(r'"(?:[^"\\]++|\\.)*+"?', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]++")
_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


class InvalidJSON(BadRequest):
    """A body that claims to be JSON and is not, or is too deep to parse safely."""

    error = "invalid_json"


def safe_equal(given: str | bytes | None, expected: str | bytes | None) -> bool:
    """True only when both are non-empty and equal; constant time on the bytes."""
    if not given or not expected:
        return False
    a = given.encode("utf-8", "surrogatepass") if isinstance(given, str) else given
    b = expected.encode("utf-8", "surrogatepass") if isinstance(expected, str) else expected
    return hmac.compare_digest(a, b)


def int_arg(args, name: str, default: int, low: int, high: int) -> int:
    """A whole number from the query string, clamped to [low, high]; anything else is a clear 400."""
    raw = args.get(name)
    if raw is None or raw == "":
        return default
    text = raw.strip()
    digits = text[1:] if text[:1] == "-" else text
    if not digits.isascii() or not digits.isdigit() or len(digits) > MAX_INT_DIGITS:
        raise BadRequest(f"{name} must be a whole number between {low} and {high} / {name} 应为整数")
    return max(low, min(high, int(text)))


def clean_text(value: str) -> str:
    """Valid Unicode (no lone surrogate, no NUL), NFC: the one form every text takes inside."""
    if value.isascii() and "\x00" not in value:
        return value  # the common case, and NFC cannot change pure ASCII
    return unicodedata.normalize("NFC", valid_text(value))


def clean_tree(value: Any) -> Any:
    """Cleans every string (and key) of a parsed JSON value; its depth is already bounded."""
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, list):
        return [clean_tree(item) for item in value]
    if isinstance(value, dict):
        return {clean_text(key): clean_tree(item) for key, item in value.items()}
    return value


def clean_multidict(data: MultiDict) -> ImmutableMultiDict:
    return ImmutableMultiDict([(clean_text(k), clean_text(v) if isinstance(v, str) else v)
                               for k, v in data.items(multi=True)])


def json_depth(text: str) -> int:
    """Deepest nesting of brackets outside strings; iterative and linear, whatever the input."""
    brackets = _NOT_BRACKET.sub("", _JSON_STRING.sub("", text))
    return max(accumulate(_STEP[c] for c in brackets), default=0)


def _parse_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError(f"number {text[:20]}… is too large")
    return int(text)


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:20]} is out of range")
    return value


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


class BoundaryJSONProvider(DefaultJSONProvider):
    """The app's JSON provider (Flask hands it to every request as `json_module`): werkzeug's
    get_json calls `loads` on the raw body, so the checks run before any parsing."""

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        text = s.decode(json.detect_encoding(s)) if isinstance(s, bytes) else s
        text = text.removeprefix("\ufeff")
        if json_depth(text) > MAX_JSON_DEPTH:
            # Not a ValueError: werkzeug turns those into None for `silent` callers, and this must
            # be refused clearly everywhere.
            raise InvalidJSON(f"JSON nested deeper than {MAX_JSON_DEPTH} levels / JSON 嵌套超过{MAX_JSON_DEPTH}层")
        value = json.loads(text, parse_int=_parse_int, parse_float=_parse_float, parse_constant=_refuse_constant)
        return clean_tree(value)


class BoundaryFormParser(FormDataParser):
    def _parse_urlencoded(self, stream, mimetype, content_length, options):
        # werkzeug decodes strictly and, on failure, silently drops the whole form; keep what
        # was sent, with U+FFFD for the bytes that are not UTF-8.
        text = stream.read().decode("utf-8", "replace")
        items = parse_qsl(text, keep_blank_values=True, errors="werkzeug.url_quote")
        return stream, self.cls(items), self.cls()


class BoundaryRequest(Request):
    form_data_parser_class = BoundaryFormParser

    @cached_property
    def args(self) -> ImmutableMultiDict:
        # werkzeug decodes the raw query strictly (a 500 on a stray byte); invalid bytes stay
        # percent-encoded instead, as werkzeug already does for invalid %XX escapes.
        query = self.query_string.decode("utf-8", "werkzeug.url_quote")
        pairs = parse_qsl(query, keep_blank_values=True, errors="werkzeug.url_quote")
        return ImmutableMultiDict([(clean_text(k), clean_text(v)) for k, v in pairs])

    def _load_form_data(self) -> None:
        if "form" in self.__dict__:
            return
        super()._load_form_data()
        # A Twilio-signed form is kept exactly as received: the signature covers those values
        # (NFC could change a compatibility ideograph), and the core normaliser folds text anyway.
        if not self.headers.get("X-Twilio-Signature"):
            self.__dict__["form"] = clean_multidict(self.__dict__["form"])

    def on_json_loading_failed(self, e: ValueError | None) -> Any:
        if e is None:
            return super().on_json_loading_failed(e)  # not JSON at all: 415
        raise InvalidJSON(f"body is not valid JSON: {str(e)[:200]} / 请求内容不是有效的JSON")


def install(app) -> None:
    """Puts the boundary in front of every endpoint of `app`."""
    app.request_class = BoundaryRequest
    app.json = BoundaryJSONProvider(app)
