"""The release gate: only the model the pipeline built and checked, from a clean commit, ships.

model.json must describe this model.onnx, with handler-vs-pipeline parity within its tolerance
and test ROC-AUC at or above the minimum, every field of the type export-lambda writes and every
file it names a plain file of the model folder; the git tree must be clean and `dvc status`
must find nothing out of date (so dvc.lock describes what ships and the commit reproduces it);
and the model folder must be, file for file, the build/lambda that dvc.lock records as the
export-lambda stage's output.
"""
from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys
from pathlib import Path

import yaml

from coughlab.atomic import atomic_write_text
from coughlab.aws.deploy import DeployRefused
from coughlab.digest import model_version

DEFAULT_MIN_ROC_AUC = 0.7
EXPORT_STAGE, EXPORT_OUT = "export-lambda", "build/lambda"  # dvc.yaml's stage and its output
# model.json's fields the gate reads -> the JSON type export-lambda writes them as.
FIELD_TYPES = {"onnx_file": "string", "version": "string", "model_card": "string",
               "parity": "object", "parity.passed": "boolean", "parity.tolerance": "number",
               "parity.clips": "integer", "test_metrics": "object",
               "test_metrics.roc_auc": "number"}
# Fields naming a file of the model folder, which the package ships.
FILE_FIELDS = ("onnx_file", "model_card")


def has_type(value, kind: str) -> bool:
    """JSON type check; a boolean is not a number, and NaN or infinity is no number here."""
    if kind == "number":
        return (isinstance(value, (int, float)) and not isinstance(value, bool)
                and math.isfinite(value))
    return {"string": isinstance(value, str), "object": isinstance(value, dict),
            "boolean": isinstance(value, bool),
            "integer": isinstance(value, int) and not isinstance(value, bool)}[kind]


def type_problems(meta) -> list[str]:
    """One line per model.json field the gate reads that export-lambda would not have written."""
    if not isinstance(meta, dict):
        return [f"model.json holds {json.dumps(meta)[:60]}, not an object"]
    problems = []
    for field, kind in FIELD_TYPES.items():
        parent, _, key = field.rpartition(".")
        holder = meta.get(parent) if parent else meta
        if not isinstance(holder, dict) or holder.get(key) is None:
            continue  # absent: the checks below say what is missing
        value = holder[key]
        if not has_type(value, kind):
            article = "an" if kind[0] in "aeiou" else "a"
            problems.append(f"{field} must be {article} {kind}, not {json.dumps(value)[:60]}")
    return problems


def plain_file_name(name) -> bool:
    """A printable file name with no folder part: it cannot reach outside the model folder."""
    return (isinstance(name, str) and name.isprintable() and name not in ("", ".", "..")
            and "/" not in name and "\\" not in name)


def model_file(model_dir: Path, meta: dict, field: str) -> Path:
    """The model folder's file that model.json's `field` names; refused unless it is a plain
    file name of a regular file (not a link) in that folder, so nothing else can be packed."""
    name = meta[field]
    path = model_dir / name
    if not plain_file_name(name):
        raise DeployRefused(f"model.json {field} {name!r} is not a file name in {model_dir}; "
                            "re-run export-lambda")
    if path.is_symlink():
        raise DeployRefused(f"{path} ({field} in model.json) is a link, not a file of "
                            f"{model_dir}; re-run export-lambda")
    if not path.is_file():
        raise DeployRefused(f"{path} not found: run `make repro` (or `make pull`) first")
    return path


def read_model_meta(model_dir: Path) -> dict:
    path = model_dir / "model.json"
    if not path.is_file():
        raise DeployRefused(f"{path} not found: run `make repro` (or `make pull`) first")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DeployRefused(f"{path} is not valid JSON ({err}); restore it with "
                            "`dvc checkout build/lambda` or re-run export-lambda") from None


def check_release(model_dir: Path, meta: dict, min_roc_auc: float) -> None:
    """Refuse a model that is not the one model.json describes, or that fails parity or AUC."""
    problems = type_problems(meta)
    if problems:
        raise DeployRefused(f"{model_dir}/model.json has fields of the wrong type; re-run "
                            "export-lambda:\n  " + "\n  ".join(problems))
    if "onnx_file" not in meta:
        raise DeployRefused(f"{model_dir}/model.json names no onnx_file; re-run export-lambda")
    onnx_path = model_file(model_dir, meta, "onnx_file")
    if meta.get("model_card") is not None:
        model_file(model_dir, meta, "model_card")
    digest = model_version(onnx_path)
    if digest != meta.get("version"):
        raise DeployRefused(f"{onnx_path} (sha256 {digest}) is not the model "
                            f"{model_dir}/model.json describes (version {meta.get('version')}); "
                            "re-run `make repro`")
    # export-lambda records the gate's machine-independent facts only (the residual depends
    # on the CPU's onnxruntime kernels and goes to its log): passed, tolerance, clips.
    parity = meta.get("parity") or {}
    if parity.get("tolerance") is None or not parity.get("clips"):
        raise DeployRefused("model.json has no parity.tolerance/parity.clips: the "
                            "model was never checked against the pipeline; re-run export-lambda")
    if parity.get("passed") is not True:
        raise DeployRefused(f"the Lambda handler and the pipeline disagree beyond tolerance "
                            f"{parity['tolerance']:g} (parity.passed is not true)")
    roc_auc = (meta.get("test_metrics") or {}).get("roc_auc")
    if roc_auc is None:
        raise DeployRefused("model.json has no test_metrics.roc_auc; re-run evaluate and "
                            "export-lambda")
    if not roc_auc >= min_roc_auc:
        raise DeployRefused(f"test ROC-AUC {roc_auc:.4f} is below the minimum {min_roc_auc:g} "
                            "(--min-roc-auc / COUGHLAB_MIN_ROC_AUC)")


def git_commit(repo: Path) -> str:
    result = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True,
                            text=True)
    if result.returncode != 0:
        raise DeployRefused(f"{repo} is not a git checkout with a commit "
                            f"({result.stderr.strip()}): deploy from the repository, so the "
                            "Lambda can name its commit")
    return result.stdout.strip()


def uncommitted_changes(repo: Path) -> list[str]:
    """`git status --porcelain` lines: modified, staged and untracked (not ignored) files."""
    result = subprocess.run(["git", "-C", str(repo), "status", "--porcelain"],
                            capture_output=True, text=True, check=True)
    return result.stdout.splitlines()


def dvc_out_of_date(repo: Path) -> list[str]:
    """What `dvc status` finds changed against dvc.lock and the .dvc files, one line each."""
    result = subprocess.run([sys.executable, "-m", "dvc", "status", "--json"], cwd=repo,
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise DeployRefused(f"`dvc status` failed in {repo}: {result.stderr.strip()}")
    lines = []
    for stage, changes in json.loads(result.stdout or "{}").items():
        for change in changes:
            if isinstance(change, str):
                lines.append(f"{stage}: {change}")
                continue
            for kind, paths in change.items():
                details = (", ".join(f"{path} {state}" for path, state in paths.items())
                           if isinstance(paths, dict) else paths)
                lines.append(f"{stage}: {kind}: {details}")
    return lines


def require_reproducible(repo: Path) -> str:
    """The commit to deploy from; refuse a dirty tree or a dvc.lock the workspace does not match.

    Only then does the commit name exactly the code, params and dvc.lock that made the model.
    """
    commit = git_commit(repo)
    dirty = uncommitted_changes(repo)
    if dirty:
        raise DeployRefused("the git tree has uncommitted changes; commit or stash them so the "
                            "Lambda names a commit that holds its code:\n  " + "\n  ".join(dirty))
    stale = dvc_out_of_date(repo)
    if stale:
        raise DeployRefused("dvc.lock does not match the workspace (`dvc status`); run "
                            "`dvc repro` (or `dvc pull`) and commit dvc.lock:\n  "
                            + "\n  ".join(stale))
    return commit


def dir_md5(folder: Path) -> str:
    """The md5 DVC records for a folder output: of the sorted list of its files' md5s."""
    entries = [{"md5": hashlib.md5(path.read_bytes()).hexdigest(),
                "relpath": path.relative_to(folder).as_posix()}
               for path in sorted(folder.rglob("*")) if path.is_file()]
    entries.sort(key=lambda entry: entry["relpath"])
    return hashlib.md5(json.dumps(entries, sort_keys=True).encode()).hexdigest()


def recorded_model_md5(repo: Path) -> str:
    """The md5 dvc.lock records for build/lambda, the export-lambda stage's output."""
    lock = repo / "dvc.lock"
    try:
        stages = yaml.safe_load(lock.read_text())["stages"]
        outs = stages[EXPORT_STAGE]["outs"]
        return next(out["md5"] for out in outs if out["path"] == EXPORT_OUT).removesuffix(".dir")
    except (OSError, yaml.YAMLError, KeyError, TypeError, StopIteration, AttributeError):
        raise DeployRefused(f"{lock} records no {EXPORT_OUT} from the {EXPORT_STAGE} stage: run "
                            f"`dvc repro {EXPORT_STAGE}` and commit dvc.lock") from None


def require_pipeline_model(repo: Path, model_dir: Path) -> None:
    """Refuse a model folder that is not the build/lambda the pipeline built (dvc.lock's)."""
    recorded, found = recorded_model_md5(repo), dir_md5(model_dir)
    if found != recorded:
        raise DeployRefused(f"{model_dir} (md5 {found}) is not the {EXPORT_OUT} that "
                            f"{repo / 'dvc.lock'} records ({recorded}): deploy only the model "
                            f"the pipeline built (`dvc repro {EXPORT_STAGE}`, or `dvc checkout "
                            f"{EXPORT_OUT}`)")


def stamp_git_commit(model_json: Path, commit: str, out: Path) -> Path:
    """A copy of model.json with `git_commit` added, for the package; the original is untouched."""
    meta = json.loads(model_json.read_text()) | {"git_commit": commit}
    atomic_write_text(out, json.dumps(meta, indent=2) + "\n")
    return out
