"""coughlab.download against a loopback HTTP server: pinning, resume, retries, atomicity."""
import pytest

from coughlab import download as dl
from coughlab.config import DataConfig, RemoteArchive

from source_fixtures import ArchiveServer, sha256

BODY = bytes(range(256)) * 800  # 200 KiB: several read chunks would be needed at real scale
PATH = "/records/1/files/public_dataset.zip"


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    with ArchiveServer({PATH: BODY}).running() as srv:
        yield srv


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir())


def test_download_verifies_and_places_the_file(server, tmp_path):
    dest = tmp_path / "cache" / "a.zip"
    assert dl.download(server.url(PATH), dest, sha256(BODY)) == sha256(BODY)
    assert dest.read_bytes() == BODY
    assert leftovers(dest.parent) == ["a.zip"]


def test_dropped_connection_is_resumed_with_a_range_request(server, tmp_path):
    server.drop(PATH, after=70_000)
    dest = tmp_path / "a.zip"
    dl.download(server.url(PATH), dest, sha256(BODY), retries=2, backoff=0)
    assert dest.read_bytes() == BODY
    assert server.requests == [(PATH, None), (PATH, "bytes=70000-")]
    assert leftovers(tmp_path) == ["a.zip"]


def test_retries_exhausted_leave_no_output_and_the_next_run_resumes(server, tmp_path):
    server.drop(PATH, after=50_000, times=2)
    dest = tmp_path / "a.zip"
    with pytest.raises(dl.DownloadError, match=r"gave up after 2 attempts .*connection closed "
                       r"after 100000 of 204800 bytes.*100000 bytes are kept .*a\.zip\.part"):
        dl.download(server.url(PATH), dest, sha256(BODY), retries=1, backoff=0)
    assert not dest.exists()
    assert leftovers(tmp_path) == ["a.zip.part"]

    dl.download(server.url(PATH), dest, sha256(BODY), retries=0, backoff=0)
    assert dest.read_bytes() == BODY
    assert server.requests[-1] == (PATH, "bytes=100000-")
    assert leftovers(tmp_path) == ["a.zip"]


def test_checksum_mismatch_keeps_nothing(server, tmp_path):
    wrong = "0" * 64
    dest = tmp_path / "a.zip"
    with pytest.raises(dl.ChecksumError, match=f"(?s)sha256 mismatch.*expected {wrong}\n"
                       f"  got      {sha256(BODY)}"):
        dl.download(server.url(PATH), dest, wrong, backoff=0)
    assert leftovers(tmp_path) == []


def test_server_ignoring_range_restarts_from_zero(tmp_path, monkeypatch):
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    with ArchiveServer({PATH: BODY}, honour_range=False).running() as server:
        server.drop(PATH, after=30_000)
        dl.download(server.url(PATH), tmp_path / "a.zip", sha256(BODY), retries=1, backoff=0)
    assert (tmp_path / "a.zip").read_bytes() == BODY
    assert leftovers(tmp_path) == ["a.zip"]


def test_complete_part_file_is_finished_without_refetching(server, tmp_path):
    (tmp_path / "a.zip.part").write_bytes(BODY)
    dl.download(server.url(PATH), tmp_path / "a.zip", sha256(BODY), backoff=0)
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
    dl.download(server.url(PATH), dest, sha256(BODY))
    assert server.requests == []
    dest.write_bytes(b"an older, different archive")
    dl.download(server.url(PATH), dest, sha256(BODY), backoff=0)
    assert dest.read_bytes() == BODY


def test_unpinned_source_is_refused_with_the_pinning_command(server, tmp_path, monkeypatch):
    monkeypatch.delenv(dl.CACHE_ENV, raising=False)
    url = server.url(PATH)
    cfg = DataConfig(cache_dir=str(tmp_path), covid19_cough=RemoteArchive(url=url, sha256=None))
    with pytest.raises(dl.UnpinnedSourceError,
                       match=rf"(?s)data\.covid19_cough\.sha256 is not pinned.*"
                       rf"python -m coughlab\.download '{url}'"):
        dl.fetch_archive("covid19-cough", cfg)
    assert server.requests == []
    assert leftovers(tmp_path) == []


def test_fetch_archive_caches_under_the_configured_folder(server, tmp_path, monkeypatch):
    monkeypatch.delenv(dl.CACHE_ENV, raising=False)
    cfg = DataConfig(cache_dir=str(tmp_path),
                     covid19_cough=RemoteArchive(url=server.url(PATH), sha256=sha256(BODY)))
    path = dl.fetch_archive("covid19-cough", cfg)
    assert path.parent == tmp_path and path.name.endswith("-public_dataset.zip")
    assert dl.fetch_archive("covid19-cough", cfg) == path
    assert len(server.requests) == 1
    monkeypatch.setenv(dl.CACHE_ENV, str(tmp_path / "env"))
    assert dl.fetch_archive("covid19-cough", cfg).parent == tmp_path / "env"


def test_same_file_name_from_two_urls_gets_two_cache_entries(tmp_path):
    a = dl.cache_path(tmp_path, "https://github.com/a/x/archive/1234.zip")
    b = dl.cache_path(tmp_path, "https://github.com/b/y/archive/1234.zip")
    assert a != b and a.name.endswith("-1234.zip") and b.name.endswith("-1234.zip")


def test_cli_prints_the_hash_to_pin(server, tmp_path, capsys):
    dl.main([server.url(PATH), "--cache-dir", str(tmp_path)])
    digest, path = capsys.readouterr().out.strip().splitlines()[-1].split("  ")
    assert digest == sha256(BODY)
    assert open(path, "rb").read() == BODY
