"""Test doubles for the public sources: small synthetic upstreams in each dataset's real layout,
and a loopback HTTP server that serves them as GitHub and Zenodo do (Range support, cut and
stalled connections, lying sizes).

GitHub sources are real git repositories built in a temp dir (`Upstream.github`): served as
`git archive --format=zip --prefix=<name>-<commit>/` zips and as raw files, with a manifest
from `git ls-tree -r` in the format of src/coughlab/sources/manifests/.

Layouts (what each builder reproduces, at toy size):
- covid19-cough (GitHub `covid19-cough/dataset`): metadata.json (a list of records with
  filename, covid19, source, verified, ...) and raw/<uuid>.mp3 (call-center: 8 kHz stereo,
  telegram: 48 kHz mono).
- COUGHVID v3 (Zenodo public_dataset_v3.zip, `coughvid_20211012/`): <uuid>.webm (Opus),
  <uuid>.ogg (Vorbis) or <uuid>.wav, <uuid>.json, and metadata_compiled.csv (unnamed index
  column, uuid, cough_detected, status, ...).
- Coswara (GitHub `iiscleap/Coswara-Data`): combined_data.csv (id, covid_status, ...) and per
  date <date>/<date>.csv plus <date>/<date>.tar.gz.aa, .ab, ...: one gzipped tarball of
  <date>/<id>/<recording>.wav split into parts.
- Virufy (GitHub `virufy/virufy-data`): clinical/labels.csv (corona_test, age, gender, ...,
  cough_filename), clinical/original/<pos|neg>/<recording>.mp3 and
  clinical/segmented/<pos|neg>/<recording>-<n>.mp3.
"""
from __future__ import annotations

import contextlib
import csv
import hashlib
import http.server
import io
import json
import os
import re
import subprocess
import tarfile
import threading
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np
import soundfile as sf

ZENODO_PATH = "/records/7024894/files/public_dataset_v3.zip"
COUGHVID_TOP = "coughvid_20211012"
REPOS = {"covid19_cough": "covid19-cough/dataset", "virufy": "virufy/virufy-data",
         "coswara": "iiscleap/Coswara-Data"}


# --- audio -------------------------------------------------------------------------------------

def wave(seed: int, sr: int, channels: int = 1, seconds: float = 0.5) -> np.ndarray:
    """A short tone whose pitch depends on `seed`, so distinct clips never encode identically."""
    t = np.arange(int(sr * seconds)) / sr
    mono = 0.3 * np.sin(2 * np.pi * (220.0 + 37.0 * seed) * t)
    return np.repeat(mono[:, None], channels, axis=1).astype(np.float32)


def encode(fmt: str, seed: int, sr: int = 48000, channels: int = 1) -> bytes:
    """Encode a tone as wav, mp3 or ogg (libsndfile) or webm/Opus (PyAV) bytes."""
    if fmt == "webm":
        return _webm_opus(wave(seed, 48000, channels))
    buf = io.BytesIO()
    subtype = {"wav": "PCM_16", "mp3": "MPEG_LAYER_III", "ogg": "VORBIS"}[fmt]
    sf.write(buf, wave(seed, sr, channels), sr, format=fmt.upper(), subtype=subtype)
    return buf.getvalue()


def _webm_opus(samples: np.ndarray) -> bytes:
    buf = io.BytesIO()
    with av.open(buf, "w", format="webm") as container:
        stream = container.add_stream("libopus", rate=48000, layout="mono")
        frame = av.AudioFrame.from_ndarray(samples[:, :1].T.copy(), format="fltp", layout="mono")
        frame.sample_rate = 48000
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    return buf.getvalue()


# --- archives ----------------------------------------------------------------------------------

def zip_bytes(top: str, files: dict[str, bytes]) -> bytes:
    """A zip whose members all live under `top/`, as GitHub and Zenodo archives do."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name, data in files.items():
            zf.writestr(f"{top}/{name}", data)
    return buf.getvalue()


def csv_text(header: list[str], rows: list[list]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue().encode()


@dataclass
class C19Record:
    name: str
    covid19: bool
    channel: str = "telegram"
    verified: bool | None = None
    audio_seed: int = 0


def covid19_cough_files(records: list[C19Record]) -> dict[str, bytes]:
    """`records` sharing an audio_seed get byte-identical audio (the first one's encoding), as
    upstream duplicates do."""
    files = {"README.md": b"# Description\n", "LICENSE": b"CC0 1.0\n"}
    metadata, audio = [], {}
    for r in records:
        sr, channels = (8000, 2) if r.channel == "call-center" else (48000, 1)
        if r.audio_seed not in audio:
            audio[r.audio_seed] = encode("mp3", r.audio_seed, sr, channels)
        files[f"raw/{r.name}.mp3"] = audio[r.audio_seed]
        entry = {"filename": f"{r.name}.mp3", "comment": None, "covid19": r.covid19,
                 "source": r.channel}
        if r.verified is not None:
            entry["verified"] = r.verified
        metadata.append(entry)
    files["metadata.json"] = json.dumps(metadata, ensure_ascii=False, indent=1).encode()
    return files


def coughvid_zip(rows: list[tuple[str, str, float, str]]) -> bytes:
    """rows: (uuid, status, cough_detected, audio format 'webm' | 'ogg' | 'wav')."""
    files = {}
    table = []
    for i, (uuid, status, score, fmt) in enumerate(rows):
        files[f"{uuid}.{fmt}"] = encode(fmt, i)
        files[f"{uuid}.json"] = json.dumps({"datetime": "2020-05-01T10:00:00",
                                            "cough_detected": str(score),
                                            "status": status}).encode()
        table.append([i, uuid, "2020-05-01T10:00:00.000000+00:00", score, "", "", "30",
                      "male", "False", status])
    files["metadata_compiled.csv"] = csv_text(
        ["", "uuid", "datetime", "cough_detected", "latitude", "longitude", "age", "gender",
         "respiratory_condition", "status"], table)
    return zip_bytes(COUGHVID_TOP, files)


COSWARA_RECORDINGS = ("cough-heavy", "cough-shallow", "breathing-deep", "counting-normal")


def coswara_files(participants: dict[str, list[tuple[str, str]]],
                  part_size: int = 4096) -> dict[str, bytes]:
    """participants: date -> [(id, covid_status)]; every participant records all of
    COSWARA_RECORDINGS plus metadata.json, and each date's tar.gz is split into parts."""
    files, combined = {}, []
    seed = 0
    for date, people in participants.items():
        tar_buf = io.BytesIO()
        with tarfile.open(fileobj=tar_buf, mode="w:gz") as tar:
            for pid, status in people:
                for recording in COSWARA_RECORDINGS:
                    seed += 1
                    _add_to_tar(tar, f"{date}/{pid}/{recording}.wav", encode("wav", seed, 44100))
                _add_to_tar(tar, f"{date}/{pid}/metadata.json", json.dumps({"id": pid}).encode())
                combined.append([pid, "India", 30, status, "y", "male"])
        blob = tar_buf.getvalue()
        for index, start in enumerate(range(0, len(blob), part_size)):
            suffix = chr(ord("a") + index // 26) + chr(ord("a") + index % 26)
            files[f"{date}/{date}.tar.gz.{suffix}"] = blob[start:start + part_size]
        files[f"{date}/{date}.csv"] = csv_text(["id", "covid_status"],
                                               [[p, s] for p, s in people])
    files["combined_data.csv"] = csv_text(["id", "l_c", "a", "covid_status", "ep", "g"], combined)
    files["README.md"] = b"# Coswara-Data\n"
    return files


def _add_to_tar(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def virufy_files(patients: list[tuple]) -> dict[str, bytes]:
    """patients: (recording stem, corona_test value, number of segmented coughs[, age]); two
    patients of one age share every other column too, as one person recorded twice would."""
    files, table = {}, []
    for i, (stem, result, n_segments, *age) in enumerate(patients):
        folder = "pos" if result == "positive" else "neg"
        files[f"clinical/original/{folder}/{stem}.mp3"] = encode("mp3", 10 * i)
        for n in range(n_segments):
            files[f"clinical/segmented/{folder}/{stem}-{n}.mp3"] = encode("mp3", 10 * i + n + 1)
        table.append([i, result, age[0] if age else 20 + i, "male", "none", "no", "cough",
                      f"{stem}.mp3"])
    files["clinical/labels.csv"] = csv_text(
        ["", "corona_test", "age", "gender", "medical_history", "smoker",
         "patient_reported_symptoms", "cough_filename"], table)
    files["README.md"] = b"# Virufy COVID-19 Open Cough Dataset\n"
    return files


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def git_blob(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


# --- upstreams: git repositories and a Zenodo record ----------------------------------------

@dataclass
class GitSnapshot:
    repo: str
    commit: str
    archive: bytes   # what github.com/<repo>/archive/<commit>.zip serves
    manifest: str    # `git ls-tree -r <commit>`: <blob sha1>\t<mode>\t<path> lines
    files: dict[str, bytes]


def git_snapshot(workdir: Path, repo: str, files: dict[str, bytes]) -> GitSnapshot:
    """Commit `files` to a fresh git repository and archive it as GitHub does."""
    path = workdir / repo.replace("/", "_")
    for rel, data in files.items():
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        (path / rel).write_bytes(data)
    env = {**os.environ, "GIT_AUTHOR_DATE": "2023-06-23T00:00:00Z",
           "GIT_COMMITTER_DATE": "2023-06-23T00:00:00Z"}

    def git(*args: str) -> bytes:
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com",
                               "-c", "init.defaultBranch=main", *args], cwd=path, env=env,
                              check=True, capture_output=True).stdout

    git("init", "-q")
    git("add", "-A")
    git("commit", "-q", "-m", "fixture")
    commit = git("rev-parse", "HEAD").decode().strip()
    archive = git("archive", "--format=zip", f"--prefix={repo.split('/')[1]}-{commit}/", commit)
    listing = git("ls-tree", "-r", "--format=%(objectname)%x09%(objectmode)%x09%(path)", commit)
    return GitSnapshot(repo, commit, archive, listing.decode(), files)


class Upstream:
    """Fixture upstreams served from one ArchiveServer the way GitHub, raw.githubusercontent
    and Zenodo serve them, plus the manifests of their commits in `workdir/manifests`."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.manifests = workdir / "manifests"
        self.manifests.mkdir(parents=True, exist_ok=True)
        self.files: dict[str, bytes] = {}
        self.snapshots: dict[str, GitSnapshot] = {}

    def github(self, key: str, files: dict[str, bytes]) -> GitSnapshot:
        snap = git_snapshot(self.workdir, REPOS[key], files)
        self.snapshots[key] = snap
        self.files[f"/{snap.repo}/archive/{snap.commit}.zip"] = snap.archive
        for rel, data in files.items():
            self.files[f"/raw/{snap.repo}/{snap.commit}/{rel}"] = data
        (self.manifests / f"{snap.repo.replace('/', '_')}@{snap.commit}.tsv").write_text(
            snap.manifest)
        return snap

    def zenodo(self, data: bytes) -> None:
        self.files[ZENODO_PATH] = data

    def settings(self, port: int) -> dict[str, object]:
        """data.* values (as Hydra overrides would set them) pointing at the loopback server."""
        base = f"http://127.0.0.1:{port}"
        out: dict[str, object] = {"manifest_dir": str(self.manifests)}
        for key, snap in self.snapshots.items():
            template = (f"{base}/raw/{{repo}}/{{commit}}/{{path}}" if key == "coswara"
                        else f"{base}/{{repo}}/archive/{{commit}}.zip")
            out.update({f"{key}.repo": snap.repo, f"{key}.commit": snap.commit,
                        f"{key}.url": template})
        if ZENODO_PATH in self.files:
            data = self.files[ZENODO_PATH]
            out.update({"coughvid.url": f"{base}{ZENODO_PATH}?download=1",
                        "coughvid.md5": hashlib.md5(data).hexdigest(), "coughvid.size": len(data)})
        return out


# --- loopback HTTP server ----------------------------------------------------------------------

@dataclass
class ArchiveServer:
    """Serves `files` (URL path -> bytes) on 127.0.0.1 from a thread.

    Answers `Range: bytes=N-` with 206 (416 past the end) unless `honour_range` is False.
    `drop(path, after)` makes the next request for `path` send the full Content-Length
    header but only `after` body bytes, then close the connection: a cut download.
    `requests` records (path, Range header or None) for every request.
    `announce[path] = n` states a whole-file size of n bytes (Content-Length, Content-Range)
    whatever the body really is: a body cut short behind a wrong Content-Length.
    Paths in `unannounced` are sent with no Content-Length at all, ended by closing the
    connection (as on-the-fly archives are): a cut there looks like the end.
    `stall(path, after, seconds)` sends `after` bytes, then nothing for `seconds`;
    `trickle[path] = s` sends the body one byte every `s` seconds.
    """
    files: dict[str, bytes]
    honour_range: bool = True
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    announce: dict[str, int] = field(default_factory=dict)
    unannounced: set[str] = field(default_factory=set)
    trickle: dict[str, float] = field(default_factory=dict)
    _drops: dict[str, list[int]] = field(default_factory=dict)
    _stalls: dict[str, list[tuple[int, float]]] = field(default_factory=dict)

    def drop(self, path: str, after: int, times: int = 1) -> None:
        self._drops.setdefault(path, []).extend([after] * times)

    def stall(self, path: str, after: int, seconds: float) -> None:
        self._stalls.setdefault(path, []).append((after, seconds))

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    @contextlib.contextmanager
    def running(self):
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.port = server.server_address[1]
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                  daemon=True)
        thread.start()
        try:
            yield self
        finally:
            server.shutdown()
            server.server_close()
            thread.join()

    def _handler(self):
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep pytest output clean
                pass

            def do_GET(self) -> None:
                path = self.path.split("?")[0]
                range_header = self.headers.get("Range")
                owner.requests.append((path, range_header))
                if path not in owner.files:
                    self.send_error(404)
                    return
                body = owner.files[path]
                size = owner.announce.get(path, len(body))
                start = 0
                match = re.fullmatch(r"bytes=(\d+)-", range_header or "")
                if match and owner.honour_range:
                    start = int(match[1])
                    if start >= len(body):  # the truth comes out when asked for more
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
                else:
                    self.send_response(200)
                if path not in owner.unannounced:
                    self.send_header("Content-Length", str(size - start))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                drops = owner._drops.get(path)
                end = start + drops.pop(0) if drops else len(body)
                stalls = owner._stalls.get(path)
                try:
                    if stalls:
                        after, seconds = stalls.pop(0)
                        self.wfile.write(body[start:start + after])
                        self.wfile.flush()
                        time.sleep(seconds)
                    elif path in owner.trickle:
                        for i in range(start, end):
                            self.wfile.write(body[i:i + 1])
                            self.wfile.flush()
                            time.sleep(owner.trickle[path])
                    else:
                        self.wfile.write(body[start:end])
                        self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up, as it should
                self.close_connection = True

        return Handler
