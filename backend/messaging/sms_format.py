"""SMS text for feature phones: segments of at most 70 characters (one UCS-2 SMS), split
where a sentence or clause ends, and mainland phone numbers in the forms we need."""
from __future__ import annotations

import re
import unicodedata

SEGMENT_CHARS = 70  # one UCS-2 (Chinese) SMS; longer ones arrive split or not at all on old phones
_BREAKS = "。！？；，、：）)!?;,. "
_MOBILE_RE = re.compile(r"^(?:\+|00)?(?:86)?(1[3-9]\d{9})$")


def segments(text: str, limit: int = SEGMENT_CHARS) -> list[str]:
    """Splits `text` into pieces of at most `limit` characters, at the last clause break in
    each window when there is one. Numbers (references, phones) are never cut in half."""
    text = re.sub(r"\s+", " ", text).strip()
    if not text:
        return []
    if len(text) <= limit:
        return [text]
    # Reserve room for a "(1/3)" marker so the resident can tell the order on old phones.
    body_limit = limit - 5
    out: list[str] = []
    rest = text
    while rest:
        if len(rest) <= body_limit:
            out.append(rest)
            break
        window = rest[:body_limit]
        cut = max(window.rfind(ch) for ch in _BREAKS)
        if cut < body_limit // 2:
            cut = body_limit - 1
            while cut > 0 and window[cut].isdigit() and rest[cut + 1:cut + 2].isdigit():
                cut -= 1  # back off to before the number
            if cut == 0:
                cut = body_limit - 1
        out.append(rest[:cut + 1].strip())
        rest = rest[cut + 1:].strip()
    total = len(out)
    return [f"{piece}({i}/{total})" for i, piece in enumerate(out, 1)] if total > 1 else out


def mainland_mobile(number: str | None) -> str | None:
    """'+8613800138000' → '13800138000'; anything else (short codes, foreign) → None."""
    if not number:
        return None
    digits = re.sub(r"[\s()-]", "", unicodedata.normalize("NFKC", number))
    match = _MOBILE_RE.match(digits)
    return match.group(1) if match else None


def e164(number: str) -> str:
    """The form Twilio's API wants: mainland mobiles get +86, others are passed through."""
    mobile = mainland_mobile(number)
    if mobile:
        return "+86" + mobile
    return number if number.startswith("+") else "+" + number
