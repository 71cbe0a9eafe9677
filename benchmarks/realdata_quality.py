"""Real-data quality: the pipeline's ROC-AUC on real covid19-cough clips, overall and per channel.

Runs the real stages (fetch, combine, featurize, train, evaluate) on ../shared/realdata/dev in
a temporary workspace outside the repository: a params.yaml composed from conf/ with
data.sources=[local], data.local_dir=<that folder> and the seed, then
`python -m coughlab.stages.<stage>` with the workspace as working directory. Splits are
subject-disjoint (combine); the test threshold is chosen on valid (evaluate).

Next to the model, in the same run and on the same splits, a deliberately trivial
"format-only" classifier: each clip scores the train-split positive rate of clips with the
same original sample rate and channel count. It never hears a cough, so its AUC is what the
recording-channel confound alone buys (call-center clips are 8 kHz stereo and mostly
positive, telegram clips 48 kHz mono and mostly negative). The per-channel AUCs are the
figures that say whether the model heard coughs rather than phone lines.

Reference: the hobby pipeline this project replaces reported 0.74 validation ROC-AUC with
participants leaked across its splits. Here subject_id is the recording UUID (the dataset
has no participant ids), so that leak cannot happen; the channel confound is the trap.
Exits 0 with a message when the data folder is absent.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf

import coughlab
from coughlab.atomic import atomic_write_text
from coughlab.config import compose
from coughlab.metrics import binary_metrics, grouped_metrics, youden_threshold
from machine import load_average, machine_info

REPO = Path(__file__).resolve().parents[1]
REALDATA = REPO.parent / "shared" / "realdata" / "dev"
RESULT = REPO / "benchmarks" / "results" / "realdata_quality.json"
REFERENCE_VALID_AUC = 0.74  # hobby pipeline, participants leaked across splits
PER_SEED_STAGES = ("combine", "featurize", "train", "evaluate")


def write_params(workdir: Path, data_dir: Path, seed: int, epochs: int | None) -> dict:
    """Compose conf/ as `dvc exp run -S` would, with the real-data overrides; write params.yaml."""
    overrides = ["data.sources=[local]", f"data.local_dir={data_dir.resolve()}", f"seed={seed}"]
    if epochs is not None:
        overrides.append(f"train.epochs={epochs}")
    params = compose(REPO / "conf", overrides)
    atomic_write_text(workdir / "params.yaml", OmegaConf.to_yaml(params))
    return params


def run_stage(stage: str, workdir: Path) -> None:
    """One pipeline stage as dvc.yaml runs it; its output goes to stderr to keep stdout a table.

    The stage runs the very coughlab this process imported, whatever the workspace's cwd.
    """
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(Path(coughlab.__file__).parents[1]), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-m", f"coughlab.stages.{stage}"], cwd=workdir,
                          env=env, stdout=sys.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"stage {stage} failed (exit {proc.returncode}) in {workdir}")


def format_only_scores(manifest: pd.DataFrame) -> pd.Series:
    """P(positive) from the recording format alone, learnt on the train split."""
    fmt = manifest["orig_sr"].astype(str) + " Hz x" + manifest["orig_channels"].astype(str)
    positive = (manifest["label"] == "positive").astype(float)
    train = manifest["split"] == "train"
    rate = positive[train].groupby(fmt[train]).mean()
    return fmt.map(rate).fillna(positive[train].mean())


def format_only_metrics(manifest: pd.DataFrame) -> dict:
    """The format-only classifier scored like the model: threshold on valid, metrics on test."""
    frame = manifest.assign(y=(manifest["label"] == "positive").astype(int),
                            p=format_only_scores(manifest))
    valid, test = frame[frame["split"] == "valid"], frame[frame["split"] == "test"]
    threshold = youden_threshold(valid["y"].to_numpy(), valid["p"].to_numpy())
    return {"threshold": threshold,
            "valid": binary_metrics(valid["y"], valid["p"], threshold),
            "test": binary_metrics(test["y"], test["p"], threshold),
            "test_by_channel": grouped_metrics(test, "channel", threshold)}


def run_seed(workdir: Path, data_dir: Path, seed: int, epochs: int | None) -> dict:
    """combine -> featurize -> train -> evaluate for one seed (split and training both seeded)."""
    start = time.perf_counter()
    write_params(workdir, data_dir, seed, epochs)
    for stage in PER_SEED_STAGES:
        print(f"seed {seed}: {stage} ...", file=sys.stderr)
        run_stage(stage, workdir)
    manifest = pd.read_csv(workdir / "build/combined/manifest.csv", dtype={"subject_id": str})
    summary = json.loads((workdir / "build/combined/summary.json").read_text())
    return {"seed": seed,
            "clips": summary["clips"],
            "quarantined_by_reason": summary["quarantined_by_reason"],
            "by_split_label": summary["by_split_label"],
            "model": json.loads((workdir / "reports/metrics.json").read_text()),
            "format_only": format_only_metrics(manifest),
            "seconds": time.perf_counter() - start}


def headline(run: dict) -> dict[str, float | None]:
    """The figures the table shows for one seed: ROC-AUCs of both classifiers."""
    row = {"model valid": run["model"]["valid"]["roc_auc"],
           "model test": run["model"]["test"]["roc_auc"]}
    for channel, m in run["model"]["test_by_channel"].items():
        row[f"model test {channel}"] = m["roc_auc"]
    row["format-only valid"] = run["format_only"]["valid"]["roc_auc"]
    row["format-only test"] = run["format_only"]["test"]["roc_auc"]
    return row


def aggregate(rows: list[dict[str, float | None]]) -> dict[str, dict]:
    """Mean, sd, min, max of each figure over seeds (a missing AUC, one-class test, is skipped)."""
    out = {}
    for key in rows[0]:
        values = [r[key] for r in rows if r.get(key) is not None]
        if values:
            out[key] = {"mean": statistics.mean(values),
                        "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
                        "min": min(values), "max": max(values), "n": len(values)}
    return out


def print_table(result: dict) -> None:
    rows = [headline(run) for run in result["runs"]]
    keys = list(result["summary"])
    width = max(len(k) for k in keys) + 2
    print(f"\nROC-AUC on {result['dataset']} ({result['runs'][0]['clips']} clips kept), "
          f"subject-disjoint splits, seeds {result['seeds']}")
    print(f"{'':<{width}}" + "".join(f"{'seed ' + str(s):>10}" for s in result["seeds"])
          + f"{'mean ± sd':>16}")
    for key in keys:
        cells = "".join(f"{r[key]:>10.3f}" if r.get(key) is not None else f"{'-':>10}"
                        for r in rows)
        agg = result["summary"][key]
        print(f"{key:<{width}}{cells}{agg['mean']:>9.3f} ± {agg['sd']:.3f}")
    test = result["runs"][0]["model"]["test_by_channel"]
    sizes = ", ".join(f"{c} {m['n']} clips / {m['positives']} positive" for c, m in test.items())
    print(f"test split (seed {result['seeds'][0]}): {sizes}")
    print(f"reference: hobby pipeline valid ROC-AUC {REFERENCE_VALID_AUC} "
          "(participants leaked across splits)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REALDATA,
                        help="folder with labels.csv (path,label,subject_id,source,channel) and "
                        "the clips (default: %(default)s)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44],
                        help="one full combine..evaluate run per seed; the seed sets both the "
                        "split and training (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="override train.epochs (default: conf/'s value)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="keep the workspace (build/, reports/) here instead of a temp dir; "
                        "must be outside the repository")
    parser.add_argument("--out", type=Path, default=RESULT,
                        help="JSON result file (default: %(default)s)")
    args = parser.parse_args(argv)

    if not (args.data / "labels.csv").is_file():
        print(f"skipped: {args.data}/labels.csv not found (the real covid19-cough dev set is "
              "not on this machine)")
        return 0
    if args.workdir and args.workdir.resolve().is_relative_to(REPO):
        parser.error(f"--workdir {args.workdir} is inside the repository; real data must never "
                     "be copied into it")

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="coughlab-realdata-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        params = write_params(workdir, args.data, args.seeds[0], args.epochs)
        print("fetch ...", file=sys.stderr)
        run_stage("fetch", workdir)
        runs = [run_seed(workdir, args.data, seed, args.epochs) for seed in args.seeds]

    import torch

    result = {
        "benchmark": "realdata_quality",
        "command": shlex.join(["python", "benchmarks/realdata_quality.py", *(argv or sys.argv[1:])]),
        "dataset": str(args.data.resolve()),
        "seeds": args.seeds,
        "params": {k: params[k] for k in ("audio", "model", "train", "lr")},
        "reference_valid_roc_auc": REFERENCE_VALID_AUC,
        "summary": aggregate([headline(run) for run in runs]),
        "runs": runs,
        "machine": {**machine_info(), "torch": torch.__version__,
                    "torch_threads": torch.get_num_threads(),
                    "load_average_after": load_average()},
        "seconds": time.perf_counter() - started,
    }
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print_table(result)
    print(f"wrote {args.out} in {result['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
