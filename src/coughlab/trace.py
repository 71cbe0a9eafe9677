"""From a live prediction's model_version back to the commit, data and params that made it.

Each Lambda response names its `model_version`. Every export-lambda run records that version
with its provenance in reports/model.json, which is committed in git beside dvc.lock. This
searches the history of that file on HEAD and every branch, remote-tracking branch and tag
of this clone, and DVC's experiment refs (refs/exps/..., what `dvc exp run` commits to)
(`git log -S<version>`), takes the first commit that records the version, and
prints that commit, the data version (data/'s md5, as in data.dvc), the params train read, the
DVC hashes of the features and the model, and how to get that exact model back:

    git checkout <commit> && dvc pull build/lambda   # the exported files, from the DVC remote
    git checkout <commit> && dvc repro               # or rebuild them from the data

Exit status 1 and a message when the version is unknown here. A commit whose record is not
one (not JSON, NaN in it, a field of the wrong type) is skipped with one line on stderr;
`--json` prints strict JSON, and the text report escapes control characters.
A model found only in an experiment ref is named by its experiment, with how to keep it
(`dvc exp branch`, or `dvc exp apply` and commit). Exit status 1 and a message when the version
is unknown here, saying so when the working tree's reports/model.json records it (exported but
never committed: what `make serve` shows before a commit, with "git_commit": null).
"""
from __future__ import annotations

import argparse
import json
import math
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from coughlab.digest import VERSION_CHARS
from coughlab.escape import printable
from coughlab.provenance import RECORD

VERSION_PATTERN = re.compile(rf"[0-9a-f]{{{VERSION_CHARS}}}")
EXPERIMENT_REFS = "refs/exps"  # where `dvc exp run` commits each experiment


class TraceError(Exception):
    """The version cannot be traced in this clone; the message says why and what to try."""


@dataclass(frozen=True)
class Trace:
    commit: str
    date: str
    subject: str
    record: dict


def git(repo: Path, *args: str) -> str:
    result = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise TraceError(f"git {' '.join(args)} failed in {repo}: {result.stderr.strip()}")
    return result.stdout


def candidate_commits(repo: Path, version: str) -> list[str]:
    """Commits, oldest first, where the number of `version`s in the record changed."""
    out = git(repo, "log", f"-S{version}", "--reverse", "--format=%H", "HEAD", "--branches",
              "--remotes", "--tags", f"--glob={EXPERIMENT_REFS}/*", "--",
              f":(top){RECORD.as_posix()}")
    return out.split()


def experiment_of(repo: Path, commit: str) -> str | None:
    """The name of the DVC experiment holding `commit` when nothing else does; else None.

    An experiment's ref is refs/exps/<baseline[:2]>/<baseline[2:]>/<name>; DVC's own
    bookkeeping refs (refs/exps/exec/..., refs/exps/celery/...) are not experiments.
    """
    if not git(repo, "rev-list", "-n1", commit, "--not", "HEAD", "--branches", "--remotes",
               "--tags").strip():
        return None  # also on HEAD, a branch or a tag
    refs = git(repo, "for-each-ref", "--contains", commit, "--format=%(refname)",
               EXPERIMENT_REFS).split()
    names = [ref.split("/")[-1] for ref in refs if len(ref.split("/")) == 5]
    return names[0] if names else None


def experiment_note(name: str) -> str:
    return (f"experiment    {name}: on no branch yet; keep it with `dvc exp branch {name} "
            f"<branch>`, or `dvc exp apply {name}` and commit (docs/pipeline.md: Promoting an "
            "experiment)")


def uncommitted_hint(repo: Path, version: str) -> str | None:
    """Why an unknown version may be this working tree's own, exported but never committed."""
    top = Path(git(repo, "rev-parse", "--show-toplevel").strip())
    try:
        recorded = json.loads((top / RECORD).read_text()).get("version")
    except (OSError, ValueError, AttributeError):
        return None
    if recorded != version:
        return None
    return (f"it is this working tree's uncommitted model ({RECORD} records it, no commit "
            "does): commit dvc.lock and reports/model.json, or keep it as an experiment with "
            "`dvc exp save`")


def record_at(repo: Path, commit: str) -> bytes | None:
    """reports/model.json as `commit` holds it, or None where it holds none."""
    result = subprocess.run(["git", "-C", str(repo), "show", f"{commit}:{RECORD.as_posix()}"],
                            capture_output=True)
    return result.stdout if result.returncode == 0 else None


def strict_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text}: not a finite number")
    return value


def refuse_constant(name: str):
    raise ValueError(f"{name}: not strict JSON")


def parse_record(raw: bytes) -> dict:
    """A record as strict JSON (no NaN or Infinity, which --json would print) with the fields
    `report` reads, of the types it reads; ValueError saying what is wrong otherwise."""
    try:
        record = json.loads(raw.decode("utf-8"), parse_constant=refuse_constant,
                            parse_float=strict_float)
    except UnicodeDecodeError:
        raise ValueError("not UTF-8") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"not JSON ({err.msg} at line {err.lineno})") from None
    except RecursionError:
        raise ValueError("nested deeper than any record") from None
    if not isinstance(record, dict) or not isinstance(record.get("version"), str):
        raise ValueError("not an object with a string `version`")
    prov = record.get("provenance")
    if not isinstance(prov, dict):
        raise ValueError("no `provenance` object")
    for key in ("data_md5", "features_md5", "model_md5"):
        if not isinstance(prov.get(key), str):
            raise ValueError(f"no string `provenance.{key}`")
    sources = prov.get("data_sources")
    if not (isinstance(sources, list) and all(isinstance(s, str) for s in sources)):
        raise ValueError("no list of strings `provenance.data_sources`")
    if not isinstance(prov.get("params"), dict):
        raise ValueError("no `provenance.params` object")
    return record


def not_found_hint(repo: Path) -> str:
    shallow = git(repo, "rev-parse", "--is-shallow-repository").strip() == "true"
    if shallow:
        return "this clone is shallow: run `git fetch --unshallow` and try again"
    return "run `git fetch --all --tags` if it may be on a branch this clone has not fetched"


def trace(repo: Path, version: str, warn=lambda line: print(line, file=sys.stderr)) -> Trace:
    """The first commit whose reports/model.json records `version`, with that record.

    A record that is not one (not JSON, NaN in it, a field of the wrong type) is skipped with
    one line to `warn`, and the search goes on: it never hides a later valid record.
    """
    if not VERSION_PATTERN.fullmatch(version):
        raise TraceError(f"{version!r} is not a model version: expected {VERSION_CHARS} lowercase "
                         "hex digits, as in a Lambda response's model_version")
    git(repo, "rev-parse", "--git-dir")
    skipped = 0
    for commit in candidate_commits(repo, version):
        raw = record_at(repo, commit)
        if raw is None:
            continue
        try:
            found = parse_record(raw)
        except ValueError as err:
            skipped += 1
            warn(printable(f"trace: skipped {commit[:12]}: {RECORD}: {err}"))
            continue
        if found["version"] == version:
            shown = git(repo, "show", "-s", "--format=%cI%x00%s", commit).rstrip("\n")
            date, subject = shown.split("\0", 1)
            return Trace(commit, date, subject, found)
    hint = uncommitted_hint(repo, version) or not_found_hint(repo)
    also = f"; {skipped} malformed record{'s' * (skipped != 1)} skipped" if skipped else ""
    raise TraceError(f"unknown model version {version}: no commit in this clone records it in "
                     f"{RECORD} ({hint}{also})")


def report(found: Trace) -> str:
    """The text report, every line printable: a commit subject or a record's strings may
    carry escape sequences, which reach the console escaped."""
    prov = found.record["provenance"]
    params = yaml.safe_dump(prov["params"], sort_keys=False, default_flow_style=False).rstrip()
    return "\n".join(printable(line) for line in [
        f"model version  {found.record['version']}",
        f"commit         {found.commit}  {found.date}  {found.subject}",
        f"data           data/ md5 {prov['data_md5']} (data.dvc), sources: "
        f"{', '.join(prov['data_sources'])}",
        f"features       build/features md5 {prov['features_md5']} (dvc.lock)",
        f"trained model  build/model md5 {prov['model_md5']} (dvc.lock)",
        "params (train):",
        *(f"  {line}" for line in params.splitlines()),
        "",
        "this exact model:",
        f"  git checkout {found.commit} && dvc pull build/lambda   # from the DVC remote",
        f"  git checkout {found.commit} && dvc repro               # or rebuild from the data",
    ])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m coughlab.trace", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_version", help=f"the {VERSION_CHARS}-hex-digit model_version a "
                        "Lambda response (or build/lambda/model.json) names")
    parser.add_argument("--repo", type=Path, default=Path("."),
                        help="any directory of the git clone to search (default: here)")
    parser.add_argument("--json", action="store_true",
                        help="print {commit, date, subject, version, provenance} as JSON")
    args = parser.parse_args(argv)
    try:
        found = trace(args.repo, args.model_version)
    except TraceError as err:
        sys.exit(f"trace: {err}")
    experiment = experiment_of(args.repo, found.commit)
    if args.json:
        print(json.dumps({"commit": found.commit, "date": found.date, "subject": found.subject,
                          "experiment": experiment, **found.record}, indent=2,
                         allow_nan=False))
    else:
        print(report(found))
        if experiment:
            print(experiment_note(experiment))


if __name__ == "__main__":
    main()
