"""Small builders shared by the unit tests: tiny params and learnable synthetic features."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml

from coughlab.config import Params, compose, params_from

ROOT = Path(__file__).resolve().parents[1]


def conf(*overrides: str) -> Params:
    """The repo's conf/ with Hydra overrides, typed: the params a stage would read."""
    return params_from(compose(ROOT / "conf", list(overrides)))


def write_params(workdir: Path, *overrides: str) -> Path:
    """A params.yaml composed from the repo's conf/ with Hydra overrides, as dvc exp run does."""
    params = compose(ROOT / "conf", list(overrides))
    path = workdir / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def make_features(out: Path, n_per_split=(48, 16, 16), n_mels=64, frames=48, seed=0) -> Path:
    """Features whose positives carry a brighter band: learnable in a few epochs."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    for split, n in zip(("train", "valid", "test"), n_per_split):
        y = np.arange(n) % 2
        x = rng.normal(size=(n, 1, 1, n_mels, frames)).astype(np.float32)
        x[y == 1, :, :, 20:28, :] += 1.5
        np.savez_compressed(out / f"{split}.npz", x=x, y=y.astype(np.int8),
                            path=np.array([f"{split}/{i}.wav" for i in range(n)]),
                            source=np.full(n, "sample"),
                            channel=np.where(np.arange(n) % 3 == 0, "phone", "app"))
    return out


def git_repo(path: Path) -> Path:
    """An initialised repo with one commit (dvclive reads HEAD)."""
    import subprocess

    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com"]
    subprocess.run(["git", "init", "-q"], cwd=path, check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "init"], cwd=path, check=True)
    return path


def write_evaluation(path: Path, graph_version: str | None = None) -> Path:
    """A reports/evaluation.json as evaluate writes it, in brief: what export-lambda and the
    model card read, naming `graph_version` as the graph evaluate scored."""
    auc = {"roc_auc": 0.8, "roc_auc_ci_low": 0.6, "roc_auc_ci_high": 0.95}
    path.write_text(json.dumps({
        "graph": {"version": graph_version},
        "threshold": 0.5,
        "test": {"roc_auc": 0.95, "pr_auc": 0.9, "sensitivity": 0.9, "specificity": 0.8, "n": 3,
                 "positives": 3, "roc_auc_ci_low": 0.7, "roc_auc_ci_high": 1.0},
        "headline": {"within_channel_roc_auc": 0.9, "within_channel_roc_auc_ci_low": 0.7,
                     "within_channel_roc_auc_ci_high": 1.0},
        "margin": {"within_channel_roc_auc": 0.2, "within_channel_roc_auc_ci_low": 0.05,
                   "within_channel_roc_auc_ci_high": 0.4, "warning": None},
        "channel_leakage": {"negative": auc, "positive": auc},
        "test_by_source": {"sample": auc}, "test_by_channel": {"app": auc},
        "bootstrap": {"test_subjects": 3},
        "test_size": {"rule": "at least 10 test subjects of each label", "sufficient": False,
                      "warning": "WARNING: the test split is too small"}}))
    return path


def package_lambda(root: Path, model_dir: Path, combined: Path, features: Path, fetched: Path,
                   out: Path, data_dir: Path, params_file: Path, record: Path) -> dict:
    """export-graph, then export-lambda, with a brief evaluation.json naming the exported graph
    (as evaluate writes it): the stage's inputs built from a model, as dvc repro would."""
    from coughlab.stages.export_graph import export_graph
    from coughlab.stages.export_lambda import export_lambda

    version = export_graph(model_dir, root / "graph")
    write_evaluation(root / "evaluation.json", version)
    return export_lambda(root / "graph", model_dir, root / "evaluation.json", combined, features,
                         fetched, ROOT / "lambda" / "handler.py", conf().data.quality, out,
                         data_dir, record, params_file)
