"""Where a data set's files come from, and their verification.

A source is a folder or a URL prefix; a file is fetched from the first source that has it, and
nothing is used before its digests are checked: a mismatch is an error at once (a source that
serves wrong data is not skipped over silently), a missing file or a network failure moves on to
the next source.
"""
from __future__ import annotations

import gzip
import hashlib
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

MIRROR_ENV = "WAVELET_DATA_MIRROR"
RETRIES = 3
TIMEOUT_S = 60


class DownloadError(RuntimeError):
    """No source delivered a verified file; the message lists what was tried."""


class ChecksumError(DownloadError):
    def __init__(self, origin: str, algorithm: str, expected: str, actual: str, what: str):
        super().__init__(f"{origin}: {algorithm.upper()} of the {what} is {actual}, expected {expected}")


@dataclass(frozen=True)
class Source:
    """A folder or URL prefix that holds `<name>.gz` (or, a folder, `<name>`) files."""

    location: str

    @property
    def is_url(self) -> bool:
        return "://" in self.location

    def fetch(self, name: str) -> tuple[bytes, str]:
        """Bytes of the file (gzip or plain) and where they came from."""
        if self.is_url:
            url = self.location.rstrip("/") + "/" + name + ".gz"
            return _fetch_url(url), url
        for candidate in (Path(self.location) / f"{name}.gz", Path(self.location) / name):
            if candidate.is_file():
                return candidate.read_bytes(), str(candidate)
        raise FileNotFoundError(f"{Path(self.location) / name}[.gz] does not exist")


def _fetch_url(url: str) -> bytes:
    last_error: Exception | None = None
    for attempt in range(RETRIES):
        try:
            with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
                return response.read()
        except (urllib.error.URLError, OSError) as error:
            last_error = error
            if attempt + 1 < RETRIES:
                time.sleep(2**attempt)
    raise OSError(f"{url}: {last_error}")


def mirror_source(mirror: str | None, folder: str) -> list[Source]:
    """The mirror's folder of one data set (`$WAVELET_DATA_MIRROR/<folder>`), if a mirror is set."""
    return [Source(f"{mirror.rstrip('/')}/{folder}")] if mirror else []


def fetch(sources: list[Source], name: str, hint: str) -> tuple[bytes, str]:
    """Bytes of `<name>.gz` or `<name>` from the first source that has it, and where they came
    from; when none has it, DownloadError lists what was tried and `hint` says what to do."""
    tried = []
    for source in sources:
        try:
            return source.fetch(name)
        except OSError as error:
            tried.append(f"{source.location}: {error}")
    raise DownloadError(f"could not fetch {name}; sources tried: {'; '.join(tried) or 'none'}. {hint}")


def decompress(data: bytes, origin: str) -> bytes:
    """The content of gzip bytes (plain bytes as they are)."""
    if data[:2] != b"\x1f\x8b":
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError) as error:
        raise DownloadError(f"{origin}: not a readable gzip file ({error})") from None


def verify(data: bytes, origin: str, digests: dict[str, str], what: str) -> None:
    """ChecksumError unless `data` has every digest of `digests` (hashlib name -> hex digest)."""
    for algorithm, expected in digests.items():
        actual = hashlib.new(algorithm, data, usedforsecurity=False).hexdigest()  # MD5 as its authors publish it
        if actual != expected:
            raise ChecksumError(origin, algorithm, expected, actual, what)
