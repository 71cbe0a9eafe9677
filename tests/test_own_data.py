"""Your own recordings in data/: a mistake in labels.csv or too few subjects is one message,
not a 15-line traceback, and a recording labels.csv does not list is reported, not dropped
without a word."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

from helpers import write_params

ROOT = Path(__file__).resolve().parents[1]


def own_data(workdir: Path, rows: list[str], extra_files: list[str] = ()) -> Path:
    data = workdir / "mydata"
    rng = np.random.default_rng(0)
    for path in [row.split(",")[0] for row in rows] + list(extra_files):
        (data / path).parent.mkdir(parents=True, exist_ok=True)  # each its own sound
        sf.write(data / path, rng.uniform(-0.5, 0.5, 8000).astype(np.float32), 16000)
    (data / "labels.csv").write_text("path,label,subject_id,source,channel\n"
                                     + "".join(f"{row}\n" for row in rows))
    write_params(workdir, f"data.local_dir={data}")
    return data


def stage(workdir: Path, name: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", f"coughlab.stages.{name}"], cwd=workdir,
                          capture_output=True, text=True,
                          env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"})


def test_a_labels_mistake_is_a_message_without_a_traceback(tmp_path):
    own_data(tmp_path, ["a.wav,positive,s1,mine,", "b.wav,covid,s2,mine,", "c.wav,,s3,mine,"])
    result = stage(tmp_path, "fetch")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith("fetch: 2 problem(s) in ")
    assert "line 3: label 'covid' is not one of ['negative', 'positive']" in result.stderr
    assert "line 4: empty value" in result.stderr


def test_recordings_not_in_labels_csv_are_reported(tmp_path):
    unlisted = [f"extra/{i}.wav" for i in range(7)]
    own_data(tmp_path, ["a.wav,positive,s1,mine,app", "b.wav,negative,s2,mine,"], unlisted)
    result = stage(tmp_path, "fetch")
    assert result.returncode == 0, result.stderr
    (warning,) = [line for line in result.stderr.splitlines() if "WARNING" in line]
    assert "7 audio file(s)" in warning and "are not in" in warning
    assert "extra/0.wav, extra/1.wav, extra/2.wav, extra/3.wav, extra/4.wav and 2 more" in warning
    # channel may be left empty (or the column left out): fetch takes the rows as they are.
    assert (tmp_path / "build" / "fetched" / "local" / "b.wav").is_file()


def test_too_few_subjects_for_the_splits_is_a_message(tmp_path):
    own_data(tmp_path, ["a.wav,positive,s1,mine,", "b.wav,negative,s2,mine,"])
    assert stage(tmp_path, "fetch").returncode == 0
    result = stage(tmp_path, "combine")
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.splitlines()[-1].startswith("combine: source 'mine' has 2 independent")
