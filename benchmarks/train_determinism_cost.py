"""Training time with the CPU kernels pinned (bit-identical on any x86-64) against today's.

- pinned:   `coughlab.determinism.pin_cpu_kernels()` before torch loads (ATen's AVX2 kernels,
            MKL_CBWR=AVX2,STRICT), then `train_model`, which also switches oneDNN off and
            trains on one intra-op thread: what the train stage does;
- unpinned: torch's own choices (widest ISA, oneDNN on, one thread per core), the same
            training code (`fit` + `save_model`) without the pinning: today's stage;
- unpinned-1-thread: the same on one thread, which separates the kernels' cost from the
            thread count's (on a dedicated many-core machine one thread costs more than here).

The kernel choice is made when torch loads, so every run is a fresh subprocess; the two
paths alternate so a busy shared CPU slows both alike, and only the training itself is timed
(imports excluded). The features are synthetic, shaped like the embedded sample's
(64 mels x 188 frames, 170/36 train/valid clips); the network and batch size are params.yaml's.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from tqdm import tqdm

from coughlab.atomic import atomic_write_text

from machine import load_average, machine_info

REPO = Path(__file__).resolve().parents[1]
RESULT = REPO / "benchmarks" / "results" / "train_determinism_cost.json"
PATHS = ("pinned", "unpinned", "unpinned-1-thread")

# Run in the subprocess: argv = path, features dir, work dir, epochs, params.yaml.
CHILD = """
import sys, time
mode, features, work, epochs = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
if mode == "pinned":
    from coughlab.determinism import pin_cpu_kernels
    pin_cpu_kernels()
import torch
from pathlib import Path
from coughlab.config import load_params
from coughlab.nets import save_model
from coughlab.training import fit, train_model
params = load_params(Path(sys.argv[5]))
params.train.epochs = epochs
work = Path(work)
start = time.perf_counter()
if mode == "pinned":
    train_model(params, Path(features), work / "model", work / "ckpt")
else:
    if mode == "unpinned-1-thread":
        torch.set_num_threads(1)
    net, device = fit(params, Path(features), work / "ckpt", None, ())
    save_model(net, params, work / "model", device)
print(time.perf_counter() - start)
"""


def write_features(out: Path, n_per_split=(170, 36), n_mels=64, frames=188) -> Path:
    """Learnable synthetic log-mels shaped like the sample's (positives carry a band)."""
    import numpy as np

    rng = np.random.default_rng(0)
    out.mkdir(parents=True, exist_ok=True)
    for split, n in zip(("train", "valid"), n_per_split):
        y = np.arange(n) % 2
        x = rng.normal(size=(n, 1, n_mels, frames)).astype(np.float32)
        x[y == 1, :, 20:28, :] += 1.0
        np.savez(out / f"{split}.npz", x=x.astype(np.float16), y=y.astype(np.int8))
    return out


def time_training(mode: str, features: Path, epochs: int) -> float:
    """Seconds `mode` spends training, in a fresh process (kernels are chosen at import)."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    with tempfile.TemporaryDirectory() as work:
        proc = subprocess.run([sys.executable, "-c", CHILD, mode, str(features), work, str(epochs),
                               str(REPO / "params.yaml")],
                              cwd=work, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{mode} run failed:\n{proc.stderr[-3000:]}")
    return float(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Prints a table and writes the figures as JSON. The cost is the ratio of the "
        "two paths' median training times, measured alternately in the same run.")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per training run")
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs of each path")
    parser.add_argument("--out", type=Path, default=RESULT, help="JSON result file")
    args = parser.parse_args(argv)

    load_before = load_average()
    times: dict[str, list[float]] = {mode: [] for mode in PATHS}
    with tempfile.TemporaryDirectory() as tmp:
        features = write_features(Path(tmp) / "features")
        for _ in tqdm(range(args.repeats), desc="alternating runs", unit="pair"):
            for mode in PATHS:
                times[mode].append(time_training(mode, features, args.epochs))
    medians = {mode: statistics.median(t) for mode, t in times.items()}
    result = {"machine": machine_info(), "load_average_before": load_before,
              "epochs": args.epochs, "repeats": args.repeats, "seconds": times,
              "median_seconds": medians,
              "ratio_pinned_over_unpinned": medians["pinned"] / medians["unpinned"],
              "ratio_pinned_over_unpinned_1_thread":
                  medians["pinned"] / medians["unpinned-1-thread"]}
    print(f"\n{args.repeats} alternating runs of {args.epochs} epochs each, "
          f"{os.cpu_count()} CPUs, load average {load_before:.2f}")
    print(f"{'path':<20}{'median s':>10}   runs")
    for mode in PATHS:
        print(f"{mode:<20}{medians[mode]:>10.2f}   {', '.join(f'{t:.2f}' for t in times[mode])}")
    print(f"pinned / unpinned training time: {result['ratio_pinned_over_unpinned']:.2f}x "
          f"(target <= 1.5x); pinned / unpinned on one thread: "
          f"{result['ratio_pinned_over_unpinned_1_thread']:.2f}x")
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
