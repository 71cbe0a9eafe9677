"""coughlab.trace: a model_version leads back to its commit, data and params, from any clone."""
import json
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coughlab import trace
from coughlab.provenance import write_record

GIT = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com"]


def provenance(lr: float) -> dict:
    return {"data_md5": "3f69844b0eccd1df55ffcb3b3731c55f.dir", "data_sources": ["local"],
            "params": {"seed": 42, "lr": lr, "model": {"arch": "cnn"}, "train": {"epochs": 2},
                       "audio": {"sample_rate": 16000}},
            "features_md5": "12e2ebf82802aa59dcb4ed44f31be99c.dir",
            "model_md5": f"{int(lr * 1000):032x}.dir"}


def commit(repo, message):
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    subprocess.run([*GIT, "commit", "-q", "-m", message], cwd=repo, check=True)
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, check=True, capture_output=True,
                          text=True).stdout.strip()


@pytest.fixture(scope="module")
def history(tmp_path_factory):
    """Two models, each committed with its record, then an unrelated commit."""
    repo = tmp_path_factory.mktemp("repo")
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=repo, check=True)
    write_record(repo / "reports" / "model.json", "aaaaaaaaaaaa", provenance(0.003))
    first = commit(repo, "lr 3e-3")
    write_record(repo / "reports" / "model.json", "bbbbbbbbbbbb", provenance(0.001))
    second = commit(repo, "lr 1e-3")
    (repo / "README.md").write_text("unrelated\n")
    commit(repo, "docs")
    return {"repo": repo, "first": first, "second": second}


def test_each_version_leads_to_the_commit_that_recorded_it(history):
    for version, commit_key, lr in [("aaaaaaaaaaaa", "first", 0.003),
                                    ("bbbbbbbbbbbb", "second", 0.001)]:
        found = trace.trace(history["repo"], version)
        assert found.commit == history[commit_key]
        assert found.record == {"version": version, "provenance": provenance(lr)}


def test_a_fresh_clone_traces_from_its_remote_branches(history, tmp_path):
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(history["repo"]), str(clone)], check=True)
    # Only origin/main now holds the second model's commit.
    subprocess.run(["git", "checkout", "-q", "--detach", history["first"]], cwd=clone, check=True)
    subprocess.run(["git", "branch", "-q", "-D", "main"], cwd=clone, check=True)
    assert trace.trace(clone, "bbbbbbbbbbbb").commit == history["second"]


def test_cli_names_commit_data_params_and_how_to_get_the_model(history):
    result = subprocess.run([sys.executable, "-m", "coughlab.trace", "aaaaaaaaaaaa", "--repo",
                             str(history["repo"])], capture_output=True, text=True, check=True)
    out = result.stdout
    assert f"commit         {history['first']}" in out and "lr 3e-3" in out
    assert "data/ md5 3f69844b0eccd1df55ffcb3b3731c55f.dir (data.dvc), sources: local" in out
    assert "lr: 0.003" in out and "seed: 42" in out
    assert f"git checkout {history['first']} && dvc pull build/lambda" in out
    assert f"git checkout {history['first']} && dvc repro" in out


def test_cli_json(history, capsys):
    trace.main(["bbbbbbbbbbbb", "--repo", str(history["repo"]), "--json"])
    printed = json.loads(capsys.readouterr().out)
    assert printed["commit"] == history["second"] and printed["provenance"] == provenance(0.001)


@pytest.mark.parametrize("version,message", [
    ("cccccccccccc", "unknown model version cccccccccccc: no commit in this clone records it"),
    ("aaaaaa", "'aaaaaa' is not a model version: expected 12 lowercase hex digits"),
    # A substring of a recorded hash is not a version.
    ("3f69844b0ecc", "unknown model version 3f69844b0ecc"),
])
def test_unknown_or_malformed_version_is_refused(history, version, message):
    with pytest.raises(SystemExit, match=message):
        trace.main([version, "--repo", str(history["repo"])])


def test_outside_a_git_repository_says_so(tmp_path):
    with pytest.raises(SystemExit, match="not a git repository"):
        trace.main(["aaaaaaaaaaaa", "--repo", str(tmp_path)])


def test_help_explains(capsys):
    with pytest.raises(SystemExit) as exit_info:
        trace.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "model_version" in out and "dvc pull build/lambda" in out and "git log -S" in out


# --- malformed records, strict JSON, escaped output ---------------------------------------

def record_bytes(version: str, **changes) -> bytes:
    """A reports/model.json for `version` with provenance fields replaced by `changes`."""
    return json.dumps({"version": version, "provenance": {**provenance(0.002), **changes}},
                      indent=2).encode()


MALFORMED = {
    "not JSON": b'{"version": "cccccccccccc", "provenance": {',
    "not UTF-8": b'{"version": "cccccccccccc", "x": "\xff\xfe"}',
    "a list": b'["cccccccccccc"]',
    "a string": b'"cccccccccccc"',
    "no provenance": b'{"version": "cccccccccccc"}',
    "provenance a list": b'{"version": "cccccccccccc", "provenance": []}',
    "version a list": json.dumps({"version": ["cccccccccccc"],
                                  "provenance": provenance(0.002)}).encode(),
    "sources a string": record_bytes("cccccccccccc", data_sources="local"),
    "sources of numbers": record_bytes("cccccccccccc", data_sources=[1, 2]),
    "params a string": record_bytes("cccccccccccc", params="lr=0.002"),
    "md5 a number": record_bytes("cccccccccccc", model_md5=5),
    "missing md5": json.dumps({"version": "cccccccccccc", "provenance": {
        k: v for k, v in provenance(0.002).items() if k != "features_md5"}}).encode(),
    "NaN": record_bytes("cccccccccccc").replace(b'"lr": 0.002', b'"lr": NaN'),
    "Infinity": record_bytes("cccccccccccc").replace(b'"lr": 0.002', b'"lr": -Infinity'),
    "1e999": record_bytes("cccccccccccc").replace(b'"lr": 0.002', b'"lr": 1e999'),
}


def commit_record(repo, content: bytes, message: str) -> str:
    (repo / "reports").mkdir(exist_ok=True)
    (repo / "reports" / "model.json").write_bytes(content)
    return commit(repo, message)


@pytest.fixture(scope="module")
def malformed_history(tmp_path_factory):
    """Every malformed record of cccccccccccc, each undone by a valid record of another
    version (so `git log -S` lists each), then a valid record of cccccccccccc."""
    repo = tmp_path_factory.mktemp("malformed")
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=repo, check=True)
    bad = {}
    for name, content in MALFORMED.items():
        bad[name] = commit_record(repo, content, f"malformed: {name}")
        commit_record(repo, record_bytes("dddddddddddd"), "another model")
    good = commit_record(repo, record_bytes("cccccccccccc"), "the real one")
    return {"repo": repo, "bad": bad, "good": good}


def test_malformed_records_are_one_line_each_and_never_hide_a_later_valid_one(
        malformed_history, capsys):
    trace.main(["cccccccccccc", "--repo", str(malformed_history["repo"])])
    out, err = capsys.readouterr()
    assert f"commit         {malformed_history['good']}" in out
    lines = err.splitlines()
    assert len(lines) == len(MALFORMED), err
    for line, (name, commit_id) in zip(lines, malformed_history["bad"].items()):
        assert line.startswith(f"trace: skipped {commit_id[:12]}: reports/model.json: "), line
        assert "Traceback" not in line and len(line) < 300, (name, line)


def test_a_version_only_malformed_records_name_is_unknown_in_one_line(tmp_path, capsys):
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=tmp_path, check=True)
    commit_record(tmp_path, MALFORMED["NaN"], "malformed")
    with pytest.raises(SystemExit, match=r"^trace: unknown model version cccccccccccc: no commit "
                       r"in this clone records it .*; 1 malformed record skipped\)$"):
        trace.main(["cccccccccccc", "--repo", str(tmp_path)])
    assert len(capsys.readouterr().err.splitlines()) == 1


def strict(text: str):
    def refuse(constant):
        raise AssertionError(f"{constant} printed: not JSON")
    return json.loads(text, parse_constant=refuse)


def test_cli_json_is_strict_json(malformed_history, capsys):
    trace.main(["cccccccccccc", "--repo", str(malformed_history["repo"]), "--json"])
    printed = strict(capsys.readouterr().out)
    assert printed["commit"] == malformed_history["good"]


def test_control_characters_in_the_record_and_commit_are_printed_escaped(tmp_path, capsys):
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=tmp_path, check=True)
    content = record_bytes("eeeeeeeeeeee", data_sources=["local\x1b]0;pwned\x07", "a\nb"],
                           data_md5="\x1b[2J")
    commit_record(tmp_path, content, "lr \x1b[31mred")
    trace.main(["eeeeeeeeeeee", "--repo", str(tmp_path)])
    out = capsys.readouterr().out
    assert not any(ch in out for ch in "\x1b\x07"), repr(out)
    assert "lr \\x1b[31mred" in out and "local\\x1b]0;pwned\\x07, a\\nb" in out
    assert "data/ md5 \\x1b[2J" in out


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=12), inner,
                                                                max_size=4), max_leaves=12)


@settings(max_examples=300, deadline=None, database=None, derandomize=True)
@given(record=st.one_of(
    JSON_VALUES,
    st.fixed_dictionaries({"version": st.just("cccccccccccc") | JSON_VALUES,
                           "provenance": JSON_VALUES}),
    st.fixed_dictionaries({"version": st.just("cccccccccccc"), "provenance": st.fixed_dictionaries(
        {k: st.just(v) | JSON_VALUES for k, v in provenance(0.002).items()})})))
def test_any_record_is_reported_or_refused_in_one_line(record):
    """A record trace accepts is one it can report and print as strict JSON; any other is a
    ValueError of one line (NaN and Infinity included: json.dumps writes them)."""
    raw = json.dumps(record).encode()
    try:
        parsed = trace.parse_record(raw)
    except ValueError as err:
        assert "\n" not in str(err) and str(err)
        return
    found = trace.Trace("0" * 40, "2026-01-01T00:00:00+00:00", "subject", parsed)
    assert trace.report(found).startswith("model version  ")
    strict(json.dumps(parsed, allow_nan=False))
