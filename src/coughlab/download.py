"""Download public archives once, verified, into a local cache.

`download` resumes an interrupted transfer from its `.part` file with an HTTP Range request,
retries dropped connections with exponential backoff, and renames the file into place only
after its sha256 matches the pinned value, so a file at `dest` is always complete and verified.

Sources never download an archive whose sha256 is not pinned (`fetch_archive`). To pin one,
download it once and print its hash:

    python -m coughlab.download URL

then put the printed value under `data.<source>.sha256` in conf/data/sample.yaml.
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
from pathlib import Path
from urllib.parse import urlparse

from tqdm import tqdm

from coughlab.config import PARAMS_FILE, DataConfig, load_params
from coughlab.digest import sha256_file

DEFAULT_CACHE = Path("~/.cache/coughlab/downloads")
CACHE_ENV = "COUGHLAB_CACHE"
USER_AGENT = "coughlab-downloader/1"
CHUNK = 1 << 20
# Worth another try: the server or the path to it may recover. Other 4xx answers will not.
RETRYABLE_STATUS = {408, 425, 429, 500, 502, 503, 504}
NETWORK_ERRORS = (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError,
                  ssl.SSLError)


class DownloadError(RuntimeError):
    """The transfer failed for good (retries exhausted or a non-retryable HTTP answer)."""


class ChecksumError(DownloadError):
    """The downloaded bytes are not the pinned ones; nothing was kept."""


class UnpinnedSourceError(DownloadError):
    """A source's archive has no pinned sha256, so it is not downloaded at all."""


class _Retry(Exception):
    """One attempt failed in a way that a later attempt may fix."""


def cache_dir(data_cfg: DataConfig) -> Path:
    """$COUGHLAB_CACHE, else `data.cache_dir`, else ~/.cache/coughlab/downloads."""
    chosen = os.environ.get(CACHE_ENV) or data_cfg.cache_dir or DEFAULT_CACHE
    return Path(chosen).expanduser()


def cache_path(cache: Path, url: str) -> Path:
    """Where `url` is cached: its file name behind a short hash of the whole URL.

    The hash keeps two URLs that end in the same name (`.../archive/<commit>.zip` of two
    repositories, Zenodo's `public_dataset.zip`) from sharing a cache entry.
    """
    name = Path(urlparse(url).path).name or "download"
    name = re.sub(r"[^A-Za-z0-9._-]", "_", name)
    return cache / f"{hashlib.sha256(url.encode()).hexdigest()[:12]}-{name}"


def fetch_archive(source: str, data_cfg: DataConfig) -> Path:
    """The cached, verified archive of `source` (settings in `data.<key>`); refuses if unpinned."""
    key = source.replace("-", "_")
    settings = getattr(data_cfg, key)
    if not settings.url:
        raise DownloadError(f"{source}: data.{key}.url is empty; set it in conf/data/sample.yaml")
    if not settings.sha256:
        raise UnpinnedSourceError(
            f"{source}: refusing to download {settings.url} because data.{key}.sha256 is not "
            f"pinned.\nPin it once: `python -m coughlab.download '{settings.url}'` downloads the "
            f"archive into the cache and prints its sha256; check it is the data you expect, "
            f"then set data.{key}.sha256 in conf/data/sample.yaml and run `make params` "
            f"(or `dvc exp run -S 'data.{key}.sha256=<sha256>'` for one experiment).")
    dest = cache_path(cache_dir(data_cfg), settings.url)
    download(settings.url, dest, settings.sha256)
    return dest


def download(url: str, dest: Path | str, sha256: str | None, *, retries: int = 5,
             backoff: float = 2.0, timeout: float = 60.0) -> str:
    """Fetch `url` to `dest` and return its sha256.

    A file already at `dest` that matches `sha256` is reused. Bytes go to `dest.part` first;
    a dropped connection is retried `retries` times (waiting `backoff * 2**n` seconds) and
    resumes where it stopped. `dest` appears only once the whole file matches `sha256`; on a
    mismatch the bytes are deleted and ChecksumError is raised. When retries run out, `dest`
    does not exist and the `.part` file stays for the next call to resume.
    `sha256=None` skips verification: only for `python -m coughlab.download`, which prints
    the hash so that a person can pin it.
    """
    dest = Path(dest)
    expected = sha256.lower() if sha256 else None
    if dest.is_file():
        actual = sha256_file(dest)
        if expected in (None, actual):
            return actual
        print(f"download: cached {dest} does not match the pinned sha256; downloading again")
        dest.unlink()
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    _transfer(url, part, retries, backoff, timeout)
    actual = sha256_file(part)
    if expected is not None and actual != expected:
        part.unlink()
        raise ChecksumError(
            f"{url}: sha256 mismatch, the download was deleted.\n  expected {expected}\n"
            f"  got      {actual}\nEither the pinned value is wrong or the server now serves "
            f"different bytes; re-pin only after checking the new data.")
    os.replace(part, dest)
    return actual


def _transfer(url: str, part: Path, retries: int, backoff: float, timeout: float) -> None:
    """Fill `part` with the whole body of `url`, resuming and retrying as needed."""
    errors = []
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff * 2 ** (attempt - 1))
        try:
            _attempt(url, part, timeout)
            return
        except _Retry as err:
            errors.append(str(err))
            print(f"download: attempt {attempt + 1}/{retries + 1} failed: {err}")
    raise DownloadError(
        f"{url}: gave up after {retries + 1} attempts (last error: {errors[-1]}). "
        f"{part.stat().st_size if part.exists() else 0} bytes are kept in {part}; "
        "the next run resumes from there.")


def _attempt(url: str, part: Path, timeout: float) -> None:
    """One request: from the end of `part` (Range) to the end of the body."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                          timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:  # nothing left to send: `part` is already whole
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
        length = response.headers.get("Content-Length")
        total = start + int(length) if length is not None else None
        received = start
        try:
            with open(part, mode) as fh, tqdm(total=total, initial=start, unit="B",
                                              unit_scale=True, unit_divisor=1024,
                                              desc=part.name.removesuffix(".part")) as bar:
                while chunk := response.read(CHUNK):
                    fh.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
                fh.flush()
                os.fsync(fh.fileno())
        except NETWORK_ERRORS as err:
            raise _Retry(f"connection lost after {received} bytes: {type(err).__name__}") from err
    if total is not None and received < total:
        raise _Retry(f"connection closed after {received} of {total} bytes")


def _range_start(response) -> int | None:
    match = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
    return int(match.group(1)) if match else None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Download URL into the coughlab cache (resumable) and print its sha256, "
        "so it can be pinned as data.<source>.sha256 in conf/data/sample.yaml. The file is "
        "left where `dvc repro` will look for it, so fetch does not download it again.")
    parser.add_argument("url", help="the archive URL, as in data.<source>.url")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help=f"default: ${CACHE_ENV}, else data.cache_dir, else {DEFAULT_CACHE}")
    args = parser.parse_args(argv)
    cache = args.cache_dir or cache_dir(_data_config())
    dest = cache_path(cache, args.url)
    digest = download(args.url, dest, None)
    print(f"{digest}  {dest}")


def _data_config() -> DataConfig:
    """data.cache_dir from params.yaml when run in the repository, else the defaults."""
    return load_params().data if PARAMS_FILE.exists() else DataConfig()


if __name__ == "__main__":
    main()
