"""The one download function, for model files and encoder weights alike.

:func:`download` fetches an ``https://`` URL into a cache file with pooch (streamed to a
temporary file, moved into place only when complete and matching its checksum) through a
downloader that bounds what a server can make it do:

* plain ``http://`` is refused, and so is a redirect to it; TLS is always verified;
* the timeout is a total deadline for the whole download, besides a shorter stall timeout;
* at most ``max_bytes`` are written, also when a gzip-encoded body inflates (decoded here,
  piece by piece, so that a compression bomb is stopped as soon as it passes the cap);
* a known SHA-256 is enforced; otherwise the first download's hash is recorded in a
  :class:`ChecksumStore` and later downloads of the URL must match it (trust on first use);
* ``verify(path)`` (e.g. "loads as TorchScript") runs before a new file is trusted; a file
  that fails it is deleted.

pooch and requests are imported inside the functions (this module is imported at plugin load).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlparse

from ..errors import DownloadError, EmpanadaError, ModelFileError
from ._files import atomic_write_text, follow_umask, lock_for
from .config import url_scheme
from .contract import short_reason

__all__ = [
    "DOWNLOAD_TIMEOUT",
    "MAX_DOWNLOAD_BYTES",
    "ChecksumStore",
    "NoConnectionError",
    "cache_name",
    "download",
    "sha256_of",
]

logger = logging.getLogger(__name__)

#: Seconds a whole download may take (MitoNet_v1, about 221 MB, needs 62 kB/s for this).
DOWNLOAD_TIMEOUT = 3600.0
#: Seconds without any data (or to connect) before a download is abandoned.
STALL_TIMEOUT = 60.0
#: Bytes a download may write at most (after decoding), whatever the server claims.
MAX_DOWNLOAD_BYTES = 4 << 30
_CHUNK = 1 << 16


class NoConnectionError(DownloadError):
    """The server could not be reached at all (offline, DNS failure, refused)."""

    def __init__(self, message: str, url: str) -> None:
        super().__init__(message)
        self.url = url

    @property
    def host(self) -> str:
        return urlparse(self.url).hostname or self.url


def sha256_of(path: Path) -> str:
    """SHA-256 hex digest of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cache_name(url: str, stem: str | None = None, suffix: str = "") -> str:
    """A cache file name derived from ``url``, so that two URLs never share a file.

    ``<stem>-<12 hex digits of the URL's hash><suffix>``; the stem defaults to the URL's last
    path component (without query string).
    """
    digest = hashlib.sha256(url.encode("utf-8")).hexdigest()[:12]
    if stem is None:
        stem = PurePosixPath(urlparse(url).path).name or "download"
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", stem).lstrip(".") or "download"
    return f"{safe}-{digest}{suffix}"


# --------------------------------------------------------------------------- checksums


class ChecksumStore:
    """JSON file mapping URL -> SHA-256 recorded at its first download.

    A file that cannot be read as such a mapping is never overwritten: a copy is kept beside
    it and every use raises DownloadError saying where, so that recorded hashes are not lost
    without the user knowing.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def _read(self) -> dict[str, str]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise DownloadError(f"cannot read the checksum file {self.path}: {exc}") from exc
        try:
            data = json.loads(text)
            if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
                raise ValueError("not a mapping of URLs to SHA-256 digests")
        except ValueError as exc:
            backup = self._backup()
            raise DownloadError(
                f"the checksum file {self.path} is damaged ({exc}); a copy is kept as "
                f"{backup}. Repair it, or delete it to record the checksums of downloads "
                "afresh (their first downloads will then be trusted again)."
            ) from exc
        return {str(k): v for k, v in data.items()}

    def _backup(self) -> Path:
        data = self.path.read_bytes()
        for old in sorted(self.path.parent.glob(f"{self.path.name}.damaged-*")):
            if old.read_bytes() == data:
                return old  # this damage is backed up already
        backup = self.path.with_name(f"{self.path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
        shutil.copy2(self.path, backup)
        return backup

    def get(self, url: str) -> str | None:
        """The recorded SHA-256 of ``url``, or None."""
        return self._read().get(url)

    def record(self, url: str, digest: str) -> None:
        """Record ``digest`` as the SHA-256 of ``url``."""
        with lock_for(self.path):
            data = self._read()
            data[url] = digest
            atomic_write_text(self.path, json.dumps(data, indent=2, sort_keys=True))


# --------------------------------------------------------------------------- streaming


class _Progress:
    """Byte progress to a callback ``(done, total)``, a tqdm bar (True) or nowhere."""

    def __init__(self, progress: Any, total: int | None) -> None:
        self.done = 0
        self.total = total or 0
        self.callback = progress if callable(progress) else None
        self.bar = None
        if progress is True:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="B", unit_scale=True, file=sys.stderr)

    def update(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        if self.callback is not None:
            self.callback(self.done, max(self.total, self.done))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _decoder(encoding: str | None) -> Any:
    encoding = (encoding or "identity").strip().lower()
    if encoding in ("", "identity"):
        return None
    if encoding in ("gzip", "x-gzip", "deflate"):
        return zlib.decompressobj(zlib.MAX_WBITS | 32)  # gzip or zlib header, detected
    raise DownloadError(f"the server sent an unsupported Content-Encoding '{encoding}'")


class _BoundedDownloader:
    """pooch downloader: total deadline, byte cap (after decoding), https only."""

    def __init__(self, timeout: float, max_bytes: int, progress: Any) -> None:
        self.timeout = float(timeout)
        self.max_bytes = int(max_bytes)
        self.progress = progress

    def __call__(self, url: str, output_file: Any, pooch: Any, check_only: bool = False) -> Any:
        import requests

        deadline = time.monotonic() + self.timeout
        stall = min(STALL_TIMEOUT, self.timeout)
        # Ask for the plain bytes; a server that compresses anyway is decoded with a cap.
        headers = {"Accept-Encoding": "identity"}
        with requests.get(url, stream=True, timeout=(stall, stall), headers=headers) as resp:
            resp.raise_for_status()
            if url_scheme(resp.url) != "https":
                raise DownloadError(f"{url} redirected to {resp.url}, which is not https://")
            if check_only:
                return True
            decoder = _decoder(resp.headers.get("Content-Encoding"))
            declared = resp.headers.get("Content-Length", "")
            total = int(declared) if declared.isdigit() else None
            if decoder is None and total is not None and total > self.max_bytes:
                raise DownloadError(
                    f"{url} is {total} bytes, more than the cap of {self.max_bytes}"
                )
            bar = _Progress(self.progress, total)
            try:
                with open(output_file, "wb") as out:
                    self._stream(resp, out, decoder, deadline, bar, url)
            finally:
                bar.close()
        return None

    def _stream(self, resp, out, decoder, deadline: float, bar: _Progress, url: str) -> None:
        written = 0

        def write(data: bytes) -> None:
            nonlocal written
            written += len(data)
            if written > self.max_bytes:
                raise DownloadError(
                    f"{url} inflates past the cap of {self.max_bytes} bytes; stopped"
                )
            out.write(data)

        while True:
            if time.monotonic() > deadline:
                raise DownloadError(
                    f"could not download {url}: not finished within {self.timeout:g} s"
                )
            # read1: at most one read from the socket, so the deadline is checked often
            # even when a server sends a byte at a time.
            chunk = resp.raw.read1(_CHUNK, decode_content=False)
            if not chunk:
                break
            bar.update(len(chunk))
            if decoder is None:
                write(chunk)
                continue
            while chunk:  # decode at most what still fits under the cap, then look again
                write(decoder.decompress(chunk, self.max_bytes - written + 1))
                chunk = decoder.unconsumed_tail
        if decoder is not None:
            write(decoder.flush())


class _QuietPooch(logging.Filter):
    """Drop pooch's INFO records in threads downloading here.

    pooch tells users to pass a 'known_hash' to 'pooch.retrieve', which is noise for napari
    users; the registry logs its own messages instead.
    """

    def __init__(self) -> None:
        super().__init__()
        self.threads: set[int] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.INFO or threading.get_ident() not in self.threads


_QUIET_POOCH = _QuietPooch()


@contextmanager
def _quiet_pooch(pooch_logger: logging.Logger) -> Iterator[None]:
    if _QUIET_POOCH not in pooch_logger.filters:
        pooch_logger.addFilter(_QUIET_POOCH)
    ident = threading.get_ident()
    _QUIET_POOCH.threads.add(ident)
    try:
        yield
    finally:
        _QUIET_POOCH.threads.discard(ident)


def _stat_signature(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _translate(exc: BaseException, url: str) -> DownloadError:
    """One readable DownloadError for a requests failure (not urllib3's seven lines)."""
    import requests

    if isinstance(exc, requests.HTTPError):
        resp = exc.response
        status = resp.status_code if resp is not None else "?"
        reason = resp.reason if resp is not None else exc
        return DownloadError(f"could not download {url}: HTTP {status} {reason}")
    if isinstance(exc, requests.exceptions.SSLError):
        return DownloadError(f"could not download {url}: the TLS certificate check failed")
    if isinstance(exc, requests.Timeout):
        return DownloadError(f"could not download {url}: no answer within {STALL_TIMEOUT:g} s")
    if isinstance(exc, requests.ConnectionError):
        host = urlparse(url).hostname or url
        return NoConnectionError(f"could not download {url}: no connection to {host}", url)
    return DownloadError(f"could not download {url}: {short_reason(exc)}")


def download(
    url: str,
    path: str | Path,
    *,
    sha256: str | None = None,
    checksums: ChecksumStore | None = None,
    verify: Callable[[Path], None] | None = None,
    progress: bool | Callable[[int, int], Any] = False,
    timeout: float = DOWNLOAD_TIMEOUT,
    max_bytes: int = MAX_DOWNLOAD_BYTES,
) -> Path:
    """Download ``url`` (https only) to ``path`` unless a checked copy is there; return it.

    ``sha256`` is enforced when given; otherwise ``checksums`` supplies the hash recorded at
    the first download, or records it. ``verify(path)`` must raise an EmpanadaError for a
    file that is not what was expected (the file is then deleted). ``progress`` is True for
    a bar on stderr, or a ``(done, total)`` callback in bytes. Failures raise DownloadError
    (:class:`NoConnectionError` when the host cannot be reached at all).
    """
    import pooch
    import requests

    scheme = url_scheme(url)
    if scheme == "http":
        raise DownloadError(
            f"refusing to download {url}: plain http:// can be altered on the way; use https://"
        )
    if scheme != "https":
        raise DownloadError(f"refusing to download {url}: only https:// URLs are downloaded")
    path = Path(path)
    with lock_for(path.resolve()):
        known = sha256 or (checksums.get(url) if checksums is not None else None)
        before = _stat_signature(path)
        if before is None:
            logger.info("downloading %s to %s", url, path)
        try:
            with _quiet_pooch(pooch.get_logger()):
                got = Path(
                    pooch.retrieve(
                        url,
                        known_hash=f"sha256:{known}" if known else None,
                        fname=path.name,
                        path=path.parent,
                        downloader=_BoundedDownloader(timeout, max_bytes, progress),
                    )
                )
        except ValueError as exc:  # pooch's hash mismatch
            # A stale cached copy that fails the check must not be used later either.
            path.unlink(missing_ok=True)
            origin = "the config's SHA-256" if sha256 else "the one recorded at its first download"
            where = f" ({checksums.path})" if checksums is not None and not sha256 else ""
            raise DownloadError(
                f"checksum mismatch for {url}: the file differs from {origin}{where}; "
                "it was not kept"
            ) from exc
        except requests.RequestException as exc:
            raise _translate(exc, url) from exc
        except OSError as exc:
            raise DownloadError(f"could not download {url}: {short_reason(exc)}") from exc
        # Check new files, and files never verified (left by an interrupted session).
        if verify is not None and (known is None or _stat_signature(got) != before):
            try:
                verify(got)
            except EmpanadaError as exc:
                got.unlink(missing_ok=True)
                raise ModelFileError(
                    f"the file downloaded from {url} is not usable ({exc}); it was not kept"
                ) from exc
        if known is None and checksums is not None:
            checksums.record(url, sha256_of(got))
        follow_umask(got)
        return got
