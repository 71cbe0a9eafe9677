"""Download public files once, verified, into a local cache.

`download` writes to `<dest>.part`, resumes an interrupted transfer with an HTTP Range
request, retries dropped connections with exponential backoff, and renames the file into
place only once it is whole and matches its `Pin`, so a file at `dest` is always complete
and verified. "Whole" is checked, not assumed: the size the server announced (Content-Length,
Content-Range) must be what arrived, no byte more or less, and a server that contradicts itself
is not believed.

A cached file is reused only when it is verified whole: it matches its pin, or (unpinned) a
`<dest>.whole` record says how many bytes were verified, either because the server announced
the size and exactly that arrived, or because the caller checked the content (`mark_whole`:
an archive whose pinned members all matched). Anything else is dropped and fetched again, with
a message. Unpinned bodies are capped at `data.download.max_unpinned_bytes`.
A transfer that outlives its deadline stops with the bytes received so far kept in `.part`
(they are written as they arrive, never held back in a buffer) for the next run to resume.

Pins are what the publisher states: a git blob sha1 per file from a committed manifest
(GitHub), an md5 and size (Zenodo), or a sha256. `python -m coughlab.download URL` downloads
a file into the cache and prints its digests.
"""
from __future__ import annotations

import argparse
import hashlib
import http.client
import os
import re
import ssl
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable
from urllib.parse import urlparse

from coughlab.atomic import atomic_write_text
from coughlab.config import DataConfig, DownloadConfig, load_params
from coughlab.digest import CHUNK, feed
from coughlab.progress import progress_bar

DEFAULT_CACHE = Path("~/.cache/coughlab/downloads")
CACHE_ENV = "COUGHLAB_CACHE"
USER_AGENT = "coughlab-downloader/2"
# Worth another try: the server or the path to it may recover. Other 4xx answers will not.
RETRYABLE_STATUS = {408, 425, 429, 500, 502, 503, 504}
NETWORK_ERRORS = (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError,
                  ssl.SSLError)
ALGORITHMS = ("sha256", "md5", "git-blob")


class DownloadError(RuntimeError):
    """The transfer failed for good (retries or deadline exhausted, or a non-retryable answer)."""


class ChecksumError(DownloadError):
    """The downloaded bytes are not the pinned ones; nothing was kept."""


class _Retry(Exception):
    """One attempt failed in a way that a later attempt may fix."""


@dataclass(frozen=True)
class Pin:
    """What a file must be: its digest under `algorithm` and, when known, its size in bytes.

    `git-blob` is the sha1 git stores a file under, sha1(b"blob <size>\\0" + content), which
    GitHub's manifests (`git ls-tree`) list for every file of a commit.
    """
    algorithm: str
    hexdigest: str
    size: int | None = None

    def __post_init__(self):
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"unknown digest {self.algorithm!r}; one of {ALGORITHMS}")


def stream_digest(fh: IO[bytes], algorithm: str, size: int) -> str:
    """Digest of `size` bytes read from `fh`; fewer or more bytes than `size` is an error."""
    if algorithm == "git-blob":
        digest = hashlib.sha1(b"blob %d\0" % size)
    else:
        digest = hashlib.new(algorithm)
    seen = feed(digest, fh)
    if seen != size:
        raise ChecksumError(f"expected {size} bytes, read {seen}")
    return digest.hexdigest()


def file_digest(path: Path | str, algorithm: str) -> str:
    with open(path, "rb") as fh:
        return stream_digest(fh, algorithm, os.fstat(fh.fileno()).st_size)


def pin_problem(path: Path, pin: Pin) -> str | None:
    """Why the file at `path` is not `pin` (size first: cheap), or None when it is."""
    size = path.stat().st_size
    if pin.size is not None and size != pin.size:
        return f"size {size} bytes, pinned {pin.size}"
    actual = file_digest(path, pin.algorithm)
    if actual != pin.hexdigest.lower():
        return f"{pin.algorithm} mismatch:\n  expected {pin.hexdigest.lower()}\n  got      {actual}"
    return None


def whole_record(dest: Path) -> Path:
    return dest.with_name(dest.name + ".whole")


def mark_whole(dest: Path) -> None:
    """Record that `dest`, as it is now, is the whole file: later calls may reuse it unpinned."""
    atomic_write_text(whole_record(dest), f"{dest.stat().st_size}\n")


def drop_cached(dest: Path) -> None:
    """Delete a cached file and its record, so the next run downloads it afresh."""
    whole_record(dest).unlink(missing_ok=True)
    dest.unlink(missing_ok=True)


def cached_problem(dest: Path, pin: Pin | None) -> str | None:
    """Why the cached `dest` may not be reused, or None when it is verified whole."""
    if pin is not None:
        problem = pin_problem(dest, pin)
        return None if problem is None else f"is not the pinned file ({problem.splitlines()[0]})"
    record = whole_record(dest)
    verified = record.read_text().strip() if record.is_file() else ""
    if not verified.isdigit():
        return "was never verified whole (no size was announced, nor its content checked)"
    size = dest.stat().st_size
    if size != int(verified):
        return f"is {size} bytes, {verified} were verified"
    return None


def cache_dir(data_cfg: DataConfig) -> Path:
    """$COUGHLAB_CACHE, else `data.cache_dir`, else ~/.cache/coughlab/downloads."""
    chosen = os.environ.get(CACHE_ENV) or data_cfg.cache_dir or DEFAULT_CACHE
    return Path(chosen).expanduser()


def cache_path(cache: Path, url: str) -> Path:
    """Where `url` is cached: its file name behind a short hash of the whole URL.

    The hash keeps two URLs that end in the same name (`.../archive/<commit>.zip` of two
    repositories) from sharing a cache entry.
    """
    name = Path(urlparse(url).path).name or "download"
    name = re.sub(r"[^A-Za-z0-9._-]", "_", name)
    return cache / f"{hashlib.sha256(url.encode()).hexdigest()[:12]}-{name}"


def fetch_file(url: str, dest: Path, pin: Pin | None, settings: DownloadConfig,
               progress: Callable[[int], None] | None = None) -> Path:
    """`download` with the retry, timeout, deadline and size settings of `data.download`."""
    download(url, dest, pin, retries=settings.retries, timeout=settings.timeout_s,
             deadline=settings.deadline_s, max_unpinned_bytes=settings.max_unpinned_bytes,
             progress=progress)
    return dest


def download(url: str, dest: Path | str, pin: Pin | None, *, retries: int = 5,
             backoff: float = 2.0, timeout: float = 60.0, deadline: float | None = None,
             max_unpinned_bytes: int | None = None,
             progress: Callable[[int], None] | None = None) -> str:
    """Fetch `url` to `dest`; return its digest (the pin's algorithm, sha256 without a pin).

    A file already at `dest` is reused only when verified whole (`cached_problem`). `dest`
    appears only once the whole body arrived and matches `pin`; on a mismatch the bytes are
    deleted and ChecksumError names both digests. Without a pin, a body over
    `max_unpinned_bytes` is refused and deleted. When retries or the `deadline` (seconds for
    this call) run out, `dest` does not exist and the `.part` file stays for the next call to
    resume. `progress`, when given, is called with each chunk's size instead of drawing a bar.
    """
    dest = Path(dest)
    algorithm = pin.algorithm if pin else "sha256"
    if dest.is_file():
        problem = cached_problem(dest, pin)
        if problem is None:
            return pin.hexdigest.lower() if pin else file_digest(dest, algorithm)
        print(f"download: cached {dest} {problem}; downloading again")
        drop_cached(dest)
    whole_record(dest).unlink(missing_ok=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    end = time.monotonic() + deadline if deadline else None
    cap = None if pin else max_unpinned_bytes
    announced = _transfer(url, part, pin, retries, backoff, timeout, end, cap, progress)
    problem = pin_problem(part, pin) if pin else None
    if problem:
        part.unlink()
        raise ChecksumError(
            f"{url}: {problem}\nThe download was deleted. Either the pin is wrong or the server "
            "now serves different bytes; re-pin only after checking the new data.")
    digest = pin.hexdigest.lower() if pin else file_digest(part, algorithm)
    os.replace(part, dest)
    if pin is None and announced:
        mark_whole(dest)  # the announced size, and exactly that arrived
    return digest


def _transfer(url: str, part: Path, pin: Pin | None, retries: int, backoff: float,
              timeout: float, end: float | None, cap: int | None, progress) -> bool:
    """Fill `part` with the whole body of `url`, resuming and retrying as needed; True when
    the server announced the size (then it is what arrived)."""
    errors = []
    announced: list[int] = []  # sizes the server has stated for this file, in order
    for attempt in range(retries + 1):
        if attempt:
            wait = backoff * 2 ** (attempt - 1)
            if end is not None:
                wait = min(wait, max(end - time.monotonic(), 0))
            time.sleep(wait)
        try:
            _attempt(url, part, pin, timeout, end, announced, cap, progress)
            return bool(announced)
        except _Retry as err:
            errors.append(str(err))
            print(f"download: attempt {attempt + 1}/{retries + 1} failed: {err}")
    raise DownloadError(
        f"{url}: gave up after {retries + 1} attempts (last error: {errors[-1]}). "
        f"{_kept(part)}")


def _kept(part: Path) -> str:
    size = part.stat().st_size if part.exists() else 0
    return f"{size} bytes are kept in {part}; the next run resumes from there."


def _attempt(url: str, part: Path, pin: Pin | None, timeout: float, end: float | None,
             announced: list[int], cap: int | None, progress) -> None:
    """One request: from the end of `part` (Range) to the end of the body.

    The body is read to the end of the connection, not to its Content-Length (which
    http.client would stop at, silently dropping the rest): a body longer than announced is
    refused. urllib asks for `Connection: close`, so the server ends the connection there.
    """
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                          timeout=_time_left(url, part, timeout, end))
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:
            _check_already_whole(url, part, offset, err.headers, announced)
            return
        if err.code in RETRYABLE_STATUS:
            raise _Retry(f"HTTP {err.code} {err.reason}") from err
        raise DownloadError(f"{url}: HTTP {err.code} {err.reason}") from err
    except NETWORK_ERRORS as err:
        raise _Retry(f"{type(err).__name__}: {err}") from err
    with response:
        if response.status == 206:
            if _range_start(response) != offset:
                part.unlink()
                raise _Retry(f"asked for bytes from {offset}, got another range; starting over")
            mode, start = "ab", offset
        else:  # a plain 200: the server ignores Range, so the body starts at byte 0
            mode, start = "wb", 0
        total = _announced_total(response, start)
        _check_total(url, part, pin, total, announced)
        _check_cap(url, part, cap, total)
        if not response.chunked:
            response.length = None  # read to the end: see more bytes than announced, if sent
        received = start
        bar = None if progress else progress_bar(
            total=total, initial=start, unit="B", unit_scale=True, unit_divisor=1024,
            desc=part.name.removesuffix(".part"))
        try:
            with open(part, mode) as fh:
                # read1: whatever has arrived, so a stalled or trickling server loses nothing
                while chunk := response.read1(CHUNK):
                    received += len(chunk)
                    _check_received(url, part, cap, total, received)
                    fh.write(chunk)
                    (progress or bar.update)(len(chunk))
                    if end is not None and time.monotonic() > end:
                        fh.flush()
                        raise DownloadError(f"{url}: not finished within data.download."
                                            f"deadline_s. {_kept_after(part, received)}")
                fh.flush()
                os.fsync(fh.fileno())
        except NETWORK_ERRORS as err:
            raise _Retry(f"connection lost after {received} bytes: {type(err).__name__}") from err
        finally:
            if bar is not None:
                bar.close()
    if total is not None and received != total:
        raise _Retry(f"connection closed after {received} of {total} bytes")


def _check_cap(url: str, part: Path, cap: int | None, total: int | None) -> None:
    """Refuse, before its body, an unpinned file announced over the cap."""
    if cap is not None and total is not None and total > cap:
        part.unlink(missing_ok=True)
        raise DownloadError(f"{url}: the server announces {total} bytes, more than "
                            f"data.download.max_unpinned_bytes={cap} for a file without a "
                            "pin; nothing was kept")


def _check_received(url: str, part: Path, cap: int | None, total: int | None,
                    received: int) -> None:
    """Stop a body that runs past its announced size, or (unpinned) past the cap."""
    if total is not None and received > total:
        part.unlink(missing_ok=True)
        raise DownloadError(f"{url}: the server sent more than the {total} bytes it announced; "
                            "a body that contradicts its own size is not believed, nothing was "
                            "kept")
    if cap is not None and received > cap:
        part.unlink(missing_ok=True)
        raise DownloadError(f"{url}: more than data.download.max_unpinned_bytes={cap} bytes "
                            "arrived for a file without a pin; nothing was kept")


def _kept_after(part: Path, received: int) -> str:
    return f"{received} bytes are kept in {part}; the next run resumes from there."


def _time_left(url: str, part: Path, timeout: float, end: float | None) -> float:
    if end is None:
        return timeout
    left = end - time.monotonic()
    if left <= 0:
        raise DownloadError(f"{url}: not finished within data.download.deadline_s. {_kept(part)}")
    return min(timeout, left)


def _announced_total(response, start: int) -> int | None:
    """The whole file's size as this response states it (Content-Range, else Content-Length)."""
    match = re.match(r"bytes \d+-\d+/(\d+)", response.headers.get("Content-Range", ""))
    if match:
        return int(match.group(1))
    length = response.headers.get("Content-Length")
    return start + int(length) if length is not None and length.isdigit() else None


def _check_total(url: str, part: Path, pin: Pin | None, total: int | None,
                 announced: list[int]) -> None:
    """Refuse a size that contradicts the pin; start over when the server contradicts itself."""
    if total is None:
        return
    if pin is not None and pin.size is not None and total != pin.size:
        raise ChecksumError(f"{url}: the server announces {total} bytes, pinned {pin.size}; "
                            "nothing was kept")
    if announced and announced[-1] != total:
        before = announced[-1]
        part.unlink(missing_ok=True)
        announced.clear()
        raise _Retry(f"the server announced {before} bytes before and {total} now; "
                     "starting over")
    announced.append(total)


def _check_already_whole(url: str, part: Path, offset: int, headers, announced: list[int]) -> None:
    """416 to `Range: bytes=<offset>-`: `part` is whole only if every stated size is `offset`."""
    match = re.fullmatch(r"bytes \*/(\d+)", (headers or {}).get("Content-Range", "") or "")
    stated = [int(match.group(1))] if match else []
    sizes = set(announced + stated)
    if sizes != {offset}:
        part.unlink(missing_ok=True)
        announced.clear()
        said = ", ".join(str(s) for s in sorted(sizes)) or "no size"
        raise _Retry(f"the server refused bytes from {offset} but stated {said}; the partial "
                     "file cannot be trusted, starting over")


def _range_start(response) -> int | None:
    match = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
    return int(match.group(1)) if match else None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m coughlab.download",
        description="Download URL into the coughlab cache (resumable, retried) and print its "
        "sha256, md5 and size: what a publisher's checksum can be compared with before pinning.")
    parser.add_argument("url")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help=f"default: ${CACHE_ENV}, else data.cache_dir, else {DEFAULT_CACHE}")
    args = parser.parse_args(argv)
    data_cfg = _data_config()
    cache = args.cache_dir or cache_dir(data_cfg)
    dest = cache_path(cache, args.url)
    digest = download(args.url, dest, None,
                      max_unpinned_bytes=data_cfg.download.max_unpinned_bytes)
    print(f"md5 {file_digest(dest, 'md5')}, {dest.stat().st_size} bytes")
    print(f"{digest}  {dest}")


def _data_config() -> DataConfig:
    """data.cache_dir and the download settings, from params.yaml (run in the repository)."""
    return load_params().data


if __name__ == "__main__":
    main()
