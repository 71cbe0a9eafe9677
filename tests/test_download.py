"""coughlab.download against a loopback HTTP server: pinning, resume, retries, atomicity."""
import contextlib
import dataclasses
import hashlib

import pytest

from coughlab import download as dl

from helpers import conf
from source_fixtures import ArchiveServer, sha256

BODY = bytes(range(256)) * 800  # 200 KiB: several read chunks would be needed at real scale
PATH = "/records/1/files/public_dataset.zip"


def pin(body=BODY):
    return dl.Pin("sha256", sha256(body))


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    with ArchiveServer({PATH: BODY}).running() as srv:
        yield srv


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir())


def test_download_verifies_and_places_the_file(server, tmp_path):
    dest = tmp_path / "cache" / "a.zip"
    assert dl.download(server.url(PATH), dest, pin()) == sha256(BODY)
    assert dest.read_bytes() == BODY
    assert leftovers(dest.parent) == ["a.zip"]


def test_dropped_connection_is_resumed_with_a_range_request(server, tmp_path):
    server.drop(PATH, after=70_000)
    dest = tmp_path / "a.zip"
    dl.download(server.url(PATH), dest, pin(), retries=2, backoff=0)
    assert dest.read_bytes() == BODY
    assert server.requests == [(PATH, None), (PATH, "bytes=70000-")]
    assert leftovers(tmp_path) == ["a.zip"]


def test_retries_exhausted_leave_no_output_and_the_next_run_resumes(server, tmp_path):
    server.drop(PATH, after=50_000, times=2)
    dest = tmp_path / "a.zip"
    with pytest.raises(dl.DownloadError, match=r"gave up after 2 attempts .*connection closed "
                       r"after 100000 of 204800 bytes.*100000 bytes are kept .*a\.zip\.part"):
        dl.download(server.url(PATH), dest, pin(), retries=1, backoff=0)
    assert not dest.exists()
    assert leftovers(tmp_path) == ["a.zip.part"]

    dl.download(server.url(PATH), dest, pin(), retries=0, backoff=0)
    assert dest.read_bytes() == BODY
    assert server.requests[-1] == (PATH, "bytes=100000-")
    assert leftovers(tmp_path) == ["a.zip"]


def test_checksum_mismatch_keeps_nothing(server, tmp_path):
    wrong = "0" * 64
    dest = tmp_path / "a.zip"
    with pytest.raises(dl.ChecksumError, match=f"(?s)sha256 mismatch.*expected {wrong}\n"
                       f"  got      {sha256(BODY)}"):
        dl.download(server.url(PATH), dest, dl.Pin("sha256", wrong), backoff=0)
    assert leftovers(tmp_path) == []


def test_server_ignoring_range_restarts_from_zero(tmp_path, monkeypatch):
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    with ArchiveServer({PATH: BODY}, honour_range=False).running() as server:
        server.drop(PATH, after=30_000)
        dl.download(server.url(PATH), tmp_path / "a.zip", pin(), retries=1, backoff=0)
    assert (tmp_path / "a.zip").read_bytes() == BODY
    assert leftovers(tmp_path) == ["a.zip"]


def test_complete_part_file_is_finished_without_refetching(server, tmp_path):
    (tmp_path / "a.zip.part").write_bytes(BODY)
    dl.download(server.url(PATH), tmp_path / "a.zip", pin(), backoff=0)
    assert server.requests == [(PATH, f"bytes={len(BODY)}-")]  # answered 416, nothing sent
    assert (tmp_path / "a.zip").read_bytes() == BODY


def test_missing_file_is_not_retried(server, tmp_path):
    with pytest.raises(dl.DownloadError, match="HTTP 404"):
        dl.download(server.url("/nope.zip"), tmp_path / "a.zip", None, retries=3, backoff=0)
    assert len(server.requests) == 1
    assert leftovers(tmp_path) == []


def test_verified_cache_is_reused_and_a_stale_one_replaced(server, tmp_path):
    dest = tmp_path / "a.zip"
    dest.write_bytes(BODY)
    dl.download(server.url(PATH), dest, pin())
    assert server.requests == []
    dest.write_bytes(b"an older, different archive")
    dl.download(server.url(PATH), dest, pin(), backoff=0)
    assert dest.read_bytes() == BODY


def test_same_file_name_from_two_urls_gets_two_cache_entries(tmp_path):
    a = dl.cache_path(tmp_path, "https://github.com/a/x/archive/1234.zip")
    b = dl.cache_path(tmp_path, "https://github.com/b/y/archive/1234.zip")
    assert a != b and a.name.endswith("-1234.zip") and b.name.endswith("-1234.zip")


def test_cli_prints_the_hash_to_pin(server, tmp_path, capsys):
    dl.main([server.url(PATH), "--cache-dir", str(tmp_path)])
    digest, path = capsys.readouterr().out.strip().splitlines()[-1].split("  ")
    assert digest == sha256(BODY)
    assert open(path, "rb").read() == BODY


@pytest.mark.parametrize("algorithm,expected", [
    ("md5", hashlib.md5(BODY).hexdigest()),
    ("git-blob", hashlib.sha1(b"blob %d\0" % len(BODY) + BODY).hexdigest()),
])
def test_md5_and_git_blob_pins_with_size(server, tmp_path, algorithm, expected):
    dest = tmp_path / "a.zip"
    assert dl.download(server.url(PATH), dest, dl.Pin(algorithm, expected, len(BODY))) == expected
    assert dest.read_bytes() == BODY


def test_announced_size_other_than_the_pinned_one_is_refused_before_the_body(server, tmp_path):
    with pytest.raises(dl.ChecksumError, match=f"announces {len(BODY)} bytes, pinned 5"):
        dl.download(server.url(PATH), tmp_path / "a.zip", dl.Pin("md5", "0" * 32, 5))
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("cut", [1, 70_000, len(BODY) - 1])
def test_body_cut_short_behind_a_wrong_content_length_is_never_complete(tmp_path, monkeypatch,
                                                                        cut):
    """The server says len(BODY) bytes but has only `cut` of them (and then, asked for the rest,
    says there is nothing left): without a pin nothing may be taken for the whole file."""
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    with ArchiveServer({PATH: BODY[:cut]}, announce={PATH: len(BODY)}).running() as server:
        with pytest.raises(dl.DownloadError, match="gave up after 3 attempts"):
            dl.download(server.url(PATH), tmp_path / "a.zip", None, retries=2, backoff=0)
    assert not (tmp_path / "a.zip").exists()


def test_stalled_server_keeps_the_bytes_received_and_the_next_run_resumes(server, tmp_path):
    server.stall(PATH, after=1000, seconds=1.5)
    dest = tmp_path / "a.zip"
    with pytest.raises(dl.DownloadError, match="connection lost after 1000 bytes"):
        dl.download(server.url(PATH), dest, pin(), retries=0, timeout=0.5)
    assert (tmp_path / "a.zip.part").stat().st_size == 1000
    dl.download(server.url(PATH), dest, pin(), retries=0)
    assert server.requests[-1] == (PATH, "bytes=1000-")
    assert dest.read_bytes() == BODY


def test_trickling_server_meets_the_overall_deadline_and_the_bytes_are_kept(server, tmp_path):
    """One byte every 20 ms never trips the per-read timeout; the deadline stops it."""
    server.trickle[PATH] = 0.02
    dest = tmp_path / "a.zip"
    with pytest.raises(dl.DownloadError, match=r"not finished within data\.download\.deadline_s"
                       r"\. (\d+) bytes are kept"):
        dl.download(server.url(PATH), dest, pin(), retries=3, timeout=5, deadline=0.5)
    kept = (tmp_path / "a.zip.part").stat().st_size
    assert 0 < kept < len(BODY)
    del server.trickle[PATH]
    dl.download(server.url(PATH), dest, pin(), retries=0)
    assert server.requests[-1] == (PATH, f"bytes={kept}-")
    assert dest.read_bytes() == BODY


# --- the cache reuses only what is verified whole; unpinned bodies are capped -----------------

@pytest.fixture
def serve_unannounced(monkeypatch):
    """`ArchiveServer` sending PATH with no Content-Length (close-delimited), like codeload."""
    monkeypatch.setenv("no_proxy", "127.0.0.1")

    @contextlib.contextmanager
    def start(body=BODY):
        with ArchiveServer({PATH: body}, unannounced={PATH}).running() as srv:
            yield srv
    return start


def test_unpinned_body_of_unknown_size_is_not_reused_until_its_content_is_checked(
        serve_unannounced, tmp_path, capsys):
    """A close-delimited body cut short looks whole; so it is never reused unchecked."""
    dest = tmp_path / "a.zip"
    with serve_unannounced(BODY[:70_000]) as server:  # the server broke off: 70 kB of 200
        dl.download(server.url(PATH), dest, None, backoff=0)
    assert dest.stat().st_size == 70_000 and leftovers(tmp_path) == ["a.zip"]
    with serve_unannounced() as server:  # fixed: the next run fetches it again, and says so
        dl.download(server.url(PATH), dest, None, backoff=0)
        assert "was never verified whole" in capsys.readouterr().out
        assert dest.read_bytes() == BODY and len(server.requests) == 1
        dl.mark_whole(dest)  # what a caller does once the content checked out
        dl.download(server.url(PATH), dest, None, backoff=0)
        assert len(server.requests) == 1  # reused
    assert leftovers(tmp_path) == ["a.zip", "a.zip.whole"]


def test_unpinned_body_of_announced_size_is_reused_while_that_size(server, tmp_path, capsys):
    dest = tmp_path / "a.zip"
    dl.download(server.url(PATH), dest, None)
    dl.download(server.url(PATH), dest, None)
    assert len(server.requests) == 1
    dest.write_bytes(BODY[:1000])  # cut short in the cache itself
    dl.download(server.url(PATH), dest, None)
    assert "is 1000 bytes, 204800 were verified" in capsys.readouterr().out
    assert dest.read_bytes() == BODY and len(server.requests) == 2


@pytest.mark.parametrize("pinned", [False, True])
def test_body_longer_than_its_content_length_is_refused(tmp_path, monkeypatch, pinned):
    """http.client stops at Content-Length and drops the rest; the body is read to its end."""
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    announced = len(BODY) - 5000
    with ArchiveServer({PATH: BODY}, announce={PATH: announced}).running() as server:
        with pytest.raises(dl.DownloadError, match=f"sent more than the {announced} bytes it "
                           "announced"):
            dl.download(server.url(PATH), tmp_path / "a.zip",
                        pin(BODY[:announced]) if pinned else None, retries=2, backoff=0)
    assert leftovers(tmp_path) == []


def test_unpinned_body_announced_over_the_cap_is_refused_before_the_body(server, tmp_path):
    with pytest.raises(dl.DownloadError, match="announces 204800 bytes, more than "
                       "data.download.max_unpinned_bytes=100000"):
        dl.download(server.url(PATH), tmp_path / "a.zip", None, max_unpinned_bytes=100_000)
    assert leftovers(tmp_path) == []


def test_unpinned_body_of_unknown_size_stops_at_the_cap(serve_unannounced, tmp_path):
    with serve_unannounced() as server:
        with pytest.raises(dl.DownloadError, match="more than data.download.max_unpinned_bytes"
                           "=100000 bytes arrived"):
            dl.download(server.url(PATH), tmp_path / "a.zip", None, max_unpinned_bytes=100_000)
    assert leftovers(tmp_path) == []


def test_the_cap_spares_pinned_files(server, tmp_path):
    dest = tmp_path / "a.zip"
    dl.download(server.url(PATH), dest, pin(), max_unpinned_bytes=1000)
    assert dest.read_bytes() == BODY


def test_fetch_file_takes_the_cap_from_data_download(server, tmp_path):
    settings = dataclasses.replace(conf().data.download, max_unpinned_bytes=1000)
    with pytest.raises(dl.DownloadError, match="max_unpinned_bytes=1000"):
        dl.fetch_file(server.url(PATH), tmp_path / "a.zip", None, settings)
