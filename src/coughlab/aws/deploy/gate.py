"""The release gate: only a model that passed the pipeline's checks, from a clean commit, ships.

model.json must describe this model.onnx, with handler-vs-pipeline parity within its tolerance
and test ROC-AUC at or above the minimum; the git tree must be clean and `dvc status` must find
nothing out of date (so dvc.lock describes what ships and the commit reproduces it).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from coughlab.atomic import atomic_write_text
from coughlab.aws.deploy import DeployRefused
from coughlab.digest import model_version

DEFAULT_MIN_ROC_AUC = 0.7


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
    if "onnx_file" not in meta:
        raise DeployRefused(f"{model_dir}/model.json names no onnx_file; re-run export-lambda")
    onnx_path = model_dir / meta["onnx_file"]
    if not onnx_path.is_file():
        raise DeployRefused(f"{onnx_path} not found: run `make repro` (or `make pull`) first")
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


def stamp_git_commit(model_json: Path, commit: str, out: Path) -> Path:
    """A copy of model.json with `git_commit` added, for the package; the original is untouched."""
    meta = json.loads(model_json.read_text()) | {"git_commit": commit}
    atomic_write_text(out, json.dumps(meta, indent=2) + "\n")
    return out
