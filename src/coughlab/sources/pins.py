"""Content pins for GitHub sources: the git blob sha1 of every file at the pinned commit.

GitHub builds archive zips on demand and does not promise stable bytes, but a file's git blob
sha1 (`git ls-tree -r <commit>`) never changes. `manifests/<owner>_<name>@<commit>.tsv` lists
`<blob sha1>\\t<mode>\\t<path>` for the files fetch uses (copied from `git ls-tree`), so every
file can be checked however it was downloaded: out of an archive zip, or one by one from the
raw file URL. A mismatch names the files and nothing of that source is written.

The archive zip itself has no pin, so its cached copy is trusted only as far as its members
are: it is kept once every member used matched, and dropped (the next run downloads it
again) when it is no zip or a member differs.
"""
from __future__ import annotations

import contextlib
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from coughlab.config import DataConfig, GitHubPin
from coughlab.download import (
    ChecksumError,
    Pin,
    cache_dir,
    cache_path,
    drop_cached,
    fetch_file,
    mark_whole,
    stream_digest,
)
from coughlab.progress import progress_bar
from coughlab.sources import LabelsError
from coughlab.sources.archive import Archive, CorruptArchive, ExtractBudget

MANIFEST_DIR = Path(__file__).parent / "manifests"


class PinMismatch(LabelsError):
    """Downloaded content differs from the committed manifest."""


@dataclass(frozen=True)
class Manifest:
    repo: str
    commit: str
    blobs: dict[str, str]  # path -> git blob sha1

    @property
    def version(self) -> str:
        return f"{self.repo}@{self.commit}"

    def pin(self, path: str) -> Pin:
        try:
            return Pin("git-blob", self.blobs[path])
        except KeyError:
            raise PinMismatch(f"{path} is not in the manifest of {self.version}") from None

    def paths(self, prefix: str = "") -> list[str]:
        return sorted(p for p in self.blobs if p.startswith(prefix))


def manifest_file(pin: GitHubPin, data_cfg: DataConfig) -> Path:
    folder = Path(data_cfg.manifest_dir) if data_cfg.manifest_dir else MANIFEST_DIR
    return folder / f"{pin.repo.replace('/', '_')}@{pin.commit}.tsv"


def load_manifest(pin: GitHubPin, data_cfg: DataConfig) -> Manifest:
    """The committed manifest of `pin.repo` at `pin.commit`; no manifest, no download."""
    path = manifest_file(pin, data_cfg)
    if not path.is_file():
        raise PinMismatch(
            f"no manifest for {pin.repo}@{pin.commit} ({path} is missing): fetch only uses "
            "versions whose content is pinned. Add one with `git ls-tree -r <commit>` in a clone "
            "of the repository, keeping the lines of the files fetch uses.")
    blobs = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        fields = line.split("\t")
        if len(fields) != 3 or len(fields[0]) != 40:
            raise PinMismatch(f"{path} line {number}: expected '<sha1>\\t<mode>\\t<path>'")
        blobs[fields[2]] = fields[0]
    return Manifest(pin.repo, pin.commit, blobs)


@contextlib.contextmanager
def github_archive(pin: GitHubPin, data_cfg: DataConfig, budget: ExtractBudget):
    """The repository's archive zip at the pinned commit, downloaded or cached, opened.

    Leaving the block normally marks the cached zip whole (every member used was verified);
    a zip that is no zip, or whose members differ from the manifest, is dropped from the cache
    with a message, so the next run fetches it afresh instead of failing on it forever.
    """
    url = pin.url.format(repo=pin.repo, commit=pin.commit)
    path = fetch_file(url, cache_path(cache_dir(data_cfg), url), None, data_cfg.download)
    try:
        with Archive(path, budget) as archive:
            yield archive
    except (CorruptArchive, PinMismatch):
        drop_cached(path)
        print(f"{budget.source}: deleted the cached archive {path}; the next run downloads it "
              "again")
        raise
    mark_whole(path)


def verify_members(archive: Archive, manifest: Manifest, names: list[str]) -> None:
    """Check each named archive member against the manifest; raise naming every mismatch."""
    wrong = []
    for name in progress_bar(names, desc=f"{archive.source} verifying", unit="file",
                             disable=len(names) < 50):
        expected = manifest.pin(name).hexdigest
        try:
            with archive.open(name) as fh:
                actual = stream_digest(fh, "git-blob", archive.size(name))
        except (zipfile.BadZipFile, ChecksumError, EOFError, zlib.error) as err:
            wrong.append(f"{name}: unreadable ({err})")
            continue
        if actual != expected:
            wrong.append(f"{name}: git blob {actual}, pinned {expected}")
    if wrong:
        shown = "\n  ".join(wrong[:20])
        more = f"\n  ... and {len(wrong) - 20} more" if len(wrong) > 20 else ""
        raise PinMismatch(f"{archive.source}: {len(wrong)} file(s) differ from the manifest of "
                          f"{manifest.version}; nothing was extracted:\n  {shown}{more}")
