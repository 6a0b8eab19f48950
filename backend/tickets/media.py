"""Photos from MMS: fetch (host allow-list, size cap, content-type allow-list), sniff the real
type, read EXIF GPS, strip EXIF, store content-addressed under DATA_DIR/media.

Nothing here trusts the sender: the declared content type is only a first filter, the bytes
decide (a text file called image/jpeg is refused), and a redirect to a host outside the
allow-list is refused like a direct link (no fetching arbitrary URLs from inside the network).
"""
from __future__ import annotations

import hashlib
import io
import logging
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import requests
from PIL import Image, ImageOps, UnidentifiedImageError

from backend.infra.private_files import ensure_private_dir

log = logging.getLogger(__name__)

EXTENSIONS = {"image/jpeg": "jpg", "image/png": "png", "image/gif": "gif", "image/heic": "heic"}
GPS_IFD = 0x8825
MAX_PIXELS = 40_000_000  # a 20 MB "photo" of 100k × 100k pixels is a decompression bomb
MAX_REDIRECTS = 3


class MediaError(Exception):
    """A photo we will not keep; `code` picks the sentence the resident gets."""

    def __init__(self, code: str, detail: str = "") -> None:
        super().__init__(f"{code}: {detail}" if detail else code)
        self.code = code  # host_not_allowed / too_large / bad_type / not_image / fetch_failed


@dataclass(frozen=True)
class MediaPolicy:
    allowed_hosts: tuple[str, ...] = ("api.twilio.com", "*.twiliocdn.com", "*.twilio.com")
    allowed_types: tuple[str, ...] = ("image/jpeg", "image/png", "image/gif", "image/heic")
    max_bytes: int = 5 * 1024 * 1024
    max_per_report: int = 3
    timeout_seconds: float = 10.0

    def host_allowed(self, url: str) -> bool:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        if parts.scheme not in {"https", "http"} or not host:
            return False
        for pattern in self.allowed_hosts:
            pattern = pattern.lower().strip()
            if pattern.startswith("*."):
                if host.endswith(pattern[1:]):
                    return True
            elif ":" in pattern:  # host:port (loopback test servers)
                if f"{host}:{parts.port}" == pattern:
                    return True
            elif host == pattern:
                return True
        return False

    def type_allowed(self, content_type: str | None) -> bool:
        return (content_type or "").split(";")[0].strip().lower() in self.allowed_types


@dataclass(frozen=True)
class StoredMedia:
    sha256: str
    content_type: str
    size: int
    path: Path
    gps: tuple[float, float] | None = None  # (lat, lon) read before stripping
    width: int = 0
    height: int = 0
    exif_found: bool = False
    extra: dict[str, str] = field(default_factory=dict)


def sniff(data: bytes) -> str | None:
    """The image type the bytes really are, whatever the sender declared."""
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if data[4:8] == b"ftyp" and data[8:12] in (b"heic", b"heix", b"mif1", b"msf1", b"heim", b"heis"):
        return "image/heic"
    return None


def _ratio(value: object) -> float:
    if isinstance(value, tuple) and len(value) == 2:
        return float(value[0]) / float(value[1]) if value[1] else 0.0
    return float(value)  # type: ignore[arg-type]


def read_gps(image: Image.Image) -> tuple[float, float] | None:
    """(lat, lon) in degrees from EXIF, None when absent or nonsense."""
    try:
        gps = image.getexif().get_ifd(GPS_IFD)
    except Exception:
        return None
    if not gps or 2 not in gps or 4 not in gps:
        return None
    try:
        lat = sum(_ratio(v) / 60**i for i, v in enumerate(gps[2]))
        lon = sum(_ratio(v) / 60**i for i, v in enumerate(gps[4]))
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    if str(gps.get(1, "N")).upper().startswith("S"):
        lat = -lat
    if str(gps.get(3, "E")).upper().startswith("W"):
        lon = -lon
    if not (-90 <= lat <= 90 and -180 <= lon <= 180) or (lat == 0 and lon == 0):
        return None
    return round(lat, 6), round(lon, 6)


class MediaStore:
    def __init__(self, root: Path, policy: MediaPolicy, auth: tuple[str, str] | None = None) -> None:
        self.root = root
        self.policy = policy
        self.auth = auth  # Twilio media may need the account's basic auth
        self._http = requests.Session()

    def path_for(self, sha256: str, content_type: str) -> Path:
        return self.root / sha256[:2] / f"{sha256}.{EXTENSIONS.get(content_type, 'bin')}"

    def find(self, sha256: str) -> Path | None:
        if len(sha256) != 64 or not all(c in "0123456789abcdef" for c in sha256):
            return None
        for ext in EXTENSIONS.values():
            path = self.root / sha256[:2] / f"{sha256}.{ext}"
            if path.exists():
                return path
        return None

    # --- fetch -----------------------------------------------------------------------------
    def fetch(self, url: str) -> tuple[bytes, str | None]:
        """Downloads at most max_bytes, following redirects only within the allow-list."""
        for _ in range(MAX_REDIRECTS + 1):
            if not self.policy.host_allowed(url):
                raise MediaError("host_not_allowed", urlsplit(url).hostname or "")
            # Credentials only for the provider's own API host, never for a CDN redirect.
            auth = self.auth if urlsplit(url).hostname == "api.twilio.com" else None
            try:
                response = self._http.get(url, stream=True, timeout=self.policy.timeout_seconds,
                                          allow_redirects=False, auth=auth)
            except requests.RequestException as exc:
                raise MediaError("fetch_failed", type(exc).__name__) from exc
            with response:
                if response.is_redirect:
                    url = urljoin(url, response.headers.get("Location", ""))
                    continue
                if response.status_code != 200:
                    raise MediaError("fetch_failed", f"HTTP {response.status_code}")
                declared = response.headers.get("Content-Type")
                length = response.headers.get("Content-Length")
                if length and length.isdigit() and int(length) > self.policy.max_bytes:
                    raise MediaError("too_large", length)
                buf = bytearray()
                for chunk in response.iter_content(64 * 1024):
                    buf += chunk
                    if len(buf) > self.policy.max_bytes:
                        raise MediaError("too_large", f">{self.policy.max_bytes}")
                return bytes(buf), declared
        raise MediaError("fetch_failed", "too many redirects")

    # --- check, strip, store -----------------------------------------------------------------
    def ingest(self, data: bytes, declared: str | None = None) -> StoredMedia:
        if len(data) > self.policy.max_bytes:
            raise MediaError("too_large", str(len(data)))
        real = sniff(data)
        if real is None:
            raise MediaError("not_image", f"declared {declared}")
        if not self.policy.type_allowed(real):
            raise MediaError("bad_type", real)
        if real == "image/heic":
            return self._store_heic(data)
        Image.MAX_IMAGE_PIXELS = MAX_PIXELS
        try:
            with Image.open(io.BytesIO(data)) as probe:
                probe.verify()  # truncated / corrupt files fail here
            image = Image.open(io.BytesIO(data))
            image.load()
        except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError, ValueError) as exc:
            raise MediaError("not_image", type(exc).__name__) from exc
        gps = read_gps(image)
        exif_found = bool(image.getexif())
        clean = self._strip(image, real)
        return self._write(clean, real, gps, image.size, exif_found)

    def _strip(self, image: Image.Image, content_type: str) -> bytes:
        """Re-encodes without metadata; the orientation tag is applied first so the stored copy
        still shows the right way up."""
        out = io.BytesIO()
        if content_type == "image/jpeg":
            upright = ImageOps.exif_transpose(image)
            rgb = upright.convert("RGB") if upright.mode not in ("RGB", "L") else upright
            rgb.save(out, "JPEG", quality=88, optimize=True)
        elif content_type == "image/png":
            upright = ImageOps.exif_transpose(image)
            upright.save(out, "PNG")
        else:
            image.save(out, "GIF")
        return out.getvalue()

    def _store_heic(self, data: bytes) -> StoredMedia:
        try:
            import pillow_heif  # optional: HEIC "where possible"
        except ImportError as exc:
            raise MediaError("bad_type", "heic support not installed") from exc
        pillow_heif.register_heif_opener()
        image = Image.open(io.BytesIO(data))
        gps = read_gps(image)
        clean = self._strip(image.convert("RGB"), "image/jpeg")
        return self._write(clean, "image/jpeg", gps, image.size, bool(image.getexif()))

    def _write(self, clean: bytes, content_type: str, gps: tuple[float, float] | None,
               size: tuple[int, int], exif_found: bool) -> StoredMedia:
        sha = hashlib.sha256(clean).hexdigest()
        path = self.path_for(sha, content_type)
        if not path.exists():  # same bytes, same file: a re-run stores nothing new
            ensure_private_dir(path.parent)  # photos are personal data: folders 0700
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")  # file 0600, kept by replace
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(clean)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        return StoredMedia(sha, content_type, len(clean), path, gps, size[0], size[1], exif_found)


def parse_hosts(value: str | None, default: Iterable[str]) -> tuple[str, ...]:
    if not value:
        return tuple(default)
    return tuple(h.strip() for h in value.split(",") if h.strip())
