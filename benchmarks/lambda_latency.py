"""Lambda latency: cold start and warm latency of the onnxruntime handler vs a torch path.

Cold start = a NEW Python process, from spawn to the first prediction on a 10 s clip:
- onnx:  import lambda/handler.py (MODEL_DIR=build/lambda) and call handler.handler() with the
         clip as a base64 body, as the Lambda runtime does; the first call loads the session;
- torch: import torch + coughlab, load build/model/model.pt into coughlab.export.ServingModel
         (same featurizer + network), decode and resample the same body, predict.
Warm latency = the same call repeated in that process. The two kinds of process run
alternately in one run, so a busy shared CPU slows both alike; the ratios are the result.
Where warm time goes (median per call): decode (base64 + audio decode + mono mixdown),
resample (the handler: only the span the graph reads, when model.json gives input_seconds;
torch: the whole clip, as the pipeline does) and graph (onnxruntime session / torch model).

Package size: lambda/requirements.txt installed for manylinux x86_64 / CPython 3.12 and zipped
with handler.py and build/lambda by coughlab.aws.deploy (the code `make deploy-lambda` uses), so
the size measured is the size shipped.

Targets (issues): onnx cold <= 0.5 s, onnx cold >= 8x and warm >= 2x faster than torch,
unzipped package <= 250 MB (Lambda's hard limit; the zip goes up via S3, so the 50 MB
direct-upload limit does not bind).
"""
from __future__ import annotations

# Only the standard library at module level: this file is also the measured child process,
# and its own imports must not count towards either path's cold start.
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import load_average, machine_info, repo_relative

REPO = Path(__file__).resolve().parents[1]
REALDATA = REPO.parent / "shared" / "realdata" / "dev"
SAMPLE = REPO / "data"
LAMBDA_MODEL = REPO / "build" / "lambda"
TORCH_MODEL = REPO / "build" / "model" / "model.pt"
HANDLER = REPO / "lambda" / "handler.py"
REQUIREMENTS = REPO / "lambda" / "requirements.txt"
DEPS_CACHE = REPO / "build" / "deploy"  # shared with `python -m coughlab.aws.deploy`
RESULT = REPO / "benchmarks" / "results" / "lambda_latency.json"
TARGETS = {"onnx_cold_s": 0.5, "cold_speedup": 8.0, "warm_speedup": 2.0, "unzipped_mb": 250.0}
MB = 1024 * 1024  # MiB, the unit of Lambda's size limits


def child_onnx(clip: Path, spawned_at: float, n_warm: int) -> dict:
    """What a Lambda container does: import the handler, then serve requests."""
    import base64

    t0 = time.perf_counter()
    sys.path.insert(0, str(HANDLER.parent))
    import handler

    t1 = time.perf_counter()
    event = {"body": base64.b64encode(clip.read_bytes()).decode(), "isBase64Encoded": True,
             "headers": {"content-type": "application/octet-stream"}}
    first = handler.handler(event)
    first_done = time.time()
    t2 = time.perf_counter()
    if first["statusCode"] != 200:
        raise RuntimeError(f"handler answered {first}")
    warm = [timed(lambda: handler.handler(event)) for _ in range(n_warm)]
    session, meta = handler.load_model()
    phases = {"decode": [], "resample": [], "graph": []}
    for _ in range(n_warm):  # the steps of handler.predict, timed one by one
        start = time.perf_counter()
        wave, sr = handler.decode(base64.b64decode(event["body"]))
        decoded = time.perf_counter()
        x = handler.graph_input(wave, sr, meta["sample_rate"], meta.get("input_seconds"))
        resampled = time.perf_counter()
        session.run([meta["output"]], {meta["input"]: x[None, :]})
        phases["decode"].append(decoded - start)
        phases["resample"].append(resampled - decoded)
        phases["graph"].append(time.perf_counter() - resampled)
    return {"cold_s": first_done - spawned_at, "import_s": t1 - t0,
            "load_and_first_call_s": t2 - t1,
            "p_positive": json.loads(first["body"])["p_positive"], "warm_s": warm,
            "warm_phases": phases}


def timed(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def child_torch(clip: Path, spawned_at: float, n_warm: int, threads: int) -> dict:
    """The same request served from the PyTorch checkpoint with coughlab."""
    import base64
    import io

    t0 = time.perf_counter()
    import soundfile as sf
    import torch

    from coughlab.audio import resample, to_mono
    from coughlab.export import ServingModel
    from coughlab.nets import load_model

    torch.set_num_threads(threads)
    t1 = time.perf_counter()
    net, audio = load_model(TORCH_MODEL)
    model = ServingModel(net, audio)
    t2 = time.perf_counter()
    body = base64.b64encode(clip.read_bytes()).decode()
    phases = {"decode": [], "resample": [], "graph": []}

    def predict() -> float:
        start = time.perf_counter()
        data, sr = sf.read(io.BytesIO(base64.b64decode(body)), dtype="float32", always_2d=True)
        mono = to_mono(data.T)
        decoded = time.perf_counter()
        wave = resample(mono, sr, audio.sample_rate)
        resampled = time.perf_counter()
        with torch.inference_mode():
            p = float(model(torch.from_numpy(wave)[None, :])[0])
        phases["decode"].append(decoded - start)
        phases["resample"].append(resampled - decoded)
        phases["graph"].append(time.perf_counter() - resampled)
        return p

    p = predict()
    first_done = time.time()
    t3 = time.perf_counter()
    warm = [timed(predict) for _ in range(n_warm)]
    return {"cold_s": first_done - spawned_at, "import_s": t1 - t0, "load_s": t2 - t1,
            "first_call_s": t3 - t2, "p_positive": p, "warm_s": warm,
            "warm_phases": {k: v[1:] for k, v in phases.items()}}


def run_child(kind: str, clip: Path, n_warm: int, threads: int) -> dict:
    """Spawn this file as a fresh process measuring one `kind`; returns its JSON report."""
    env = {**os.environ, "MODEL_DIR": str(LAMBDA_MODEL), "ORT_THREADS": str(threads),
           "OMP_NUM_THREADS": str(threads),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"),
                                                       os.environ.get("PYTHONPATH")]))}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind, "--clip", str(clip),
           "--warm", str(n_warm), "--threads", str(threads), "--spawned-at", repr(time.time())]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} child process failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def pick_dataset(realdata: Path, sample: Path) -> Path | None:
    """The real dev set when present, else the embedded sample, else None."""
    for folder in (realdata, sample):
        if (folder / "labels.csv").is_file():
            return folder
    return None


def make_clip(dataset: Path, dest: Path, seconds: float, sample_rate: int) -> Path:
    """A `seconds`-long mono PCM-16 wav at `sample_rate`: the dataset's first clip, tiled."""
    import numpy as np
    import pandas as pd
    import soundfile as sf

    from coughlab.audio import load_audio, resample, to_mono

    first = pd.read_csv(dataset / "labels.csv", dtype=str)["path"].iloc[0]
    wave, sr = load_audio(dataset / first)
    tiled = np.resize(resample(to_mono(wave), sr, sample_rate), int(seconds * sample_rate))
    sf.write(dest, np.clip(tiled, -1, 1), sample_rate, subtype="PCM_16")
    return dest


def package_size() -> dict:
    """Build the real deployment zip in a temp dir; its size zipped, unzipped, and by part."""
    from coughlab.aws.deploy.package import build_zip, ensure_dependencies

    deps = ensure_dependencies(REQUIREMENTS, DEPS_CACHE)
    with tempfile.TemporaryDirectory() as tmp:
        package = build_zip(deps, HANDLER, LAMBDA_MODEL, Path(tmp) / "function.zip")
    parts: dict[str, int] = {"handler.py + model/": HANDLER.stat().st_size + sum(
        p.stat().st_size for p in LAMBDA_MODEL.iterdir() if p.is_file())}
    for path in deps.rglob("*"):
        if path.is_file() and "__pycache__" not in path.parts:
            top = re.split(r"[.-]", path.relative_to(deps).parts[0])[0]  # numpy.libs -> numpy
            parts[top] = parts.get(top, 0) + path.stat().st_size
    pins = [line.strip() for line in REQUIREMENTS.read_text().splitlines()
            if line.strip() and not line.startswith("#")]
    return {"requirements": pins,
            "zipped_mb": package.zipped_bytes / MB, "unzipped_mb": package.unzipped_bytes / MB,
            "unzipped_mb_by_part": {k: round(v / MB, 2) for k, v in
                                    sorted(parts.items(), key=lambda kv: -kv[1]) if v >= MB / 10}}


def latency_stats(values: list[float]) -> dict:
    ordered = sorted(values)
    p95 = ordered[round(0.95 * (len(ordered) - 1))]
    return {"median_s": statistics.median(ordered), "p95_s": p95, "min_s": ordered[0],
            "n": len(ordered)}


def summarize(reports: list[dict]) -> dict:
    phases = {k: statistics.median(r[k] for r in reports)
              for k in reports[0] if k.endswith("_s") and k not in ("cold_s", "warm_s")}
    return {"cold": latency_stats([r["cold_s"] for r in reports]),
            "cold_phases_median_s": phases,
            "warm": latency_stats([w for r in reports for w in r["warm_s"]]),
            "warm_phases_median_s": {k: statistics.median(v for r in reports
                                                          for v in r["warm_phases"][k])
                                     for k in reports[0]["warm_phases"]},
            "p_positive": reports[0]["p_positive"]}


def measure(clip: Path, n_cold: int, n_warm: int, threads: int) -> dict:
    reports: dict[str, list[dict]] = {"onnx": [], "torch": []}
    for i in range(n_cold):
        print(f"cold start {i + 1}/{n_cold} ...", file=sys.stderr)
        for kind in reports:
            reports[kind].append(run_child(kind, clip, n_warm, threads))
    paths = {kind: summarize(r) for kind, r in reports.items()}
    return {
        "paths": paths,
        "cold_speedup": paths["torch"]["cold"]["median_s"] / paths["onnx"]["cold"]["median_s"],
        "warm_speedup": paths["torch"]["warm"]["median_s"] / paths["onnx"]["warm"]["median_s"],
        "p_positive_abs_diff": abs(paths["onnx"]["p_positive"] - paths["torch"]["p_positive"]),
    }


def target_checks(result: dict) -> dict[str, bool]:
    checks = {"onnx_cold_s": result["paths"]["onnx"]["cold"]["median_s"] <= TARGETS["onnx_cold_s"],
              "cold_speedup": result["cold_speedup"] >= TARGETS["cold_speedup"],
              "warm_speedup": result["warm_speedup"] >= TARGETS["warm_speedup"]}
    if "package" in result:
        checks["unzipped_mb"] = result["package"]["unzipped_mb"] <= TARGETS["unzipped_mb"]
    return checks


def print_table(result: dict) -> None:
    paths = result["paths"]
    print(f"\n10 s clip at {result['clip_sample_rate']} Hz, {result['cold_repeats']} cold "
          f"processes per path, {result['warm_calls']} warm calls each, {result['threads']} "
          f"thread(s), load average {result['load_average_before']:.2f}")
    print(f"{'path':<8}{'cold median s':>15}{'cold min s':>12}{'warm median ms':>16}"
          f"{'warm p95 ms':>13}   cold phases (median s)")
    for name, r in paths.items():
        phases = ", ".join(f"{k.removesuffix('_s')} {v:.3f}"
                           for k, v in r["cold_phases_median_s"].items())
        print(f"{name:<8}{r['cold']['median_s']:>15.3f}{r['cold']['min_s']:>12.3f}"
              f"{r['warm']['median_s'] * 1e3:>16.1f}{r['warm']['p95_s'] * 1e3:>13.1f}   {phases}")
    print("warm time per call, median ms: " + "; ".join(
        f"{name} " + ", ".join(f"{k} {v * 1e3:.2f}" for k, v in r["warm_phases_median_s"].items())
        for name, r in paths.items()))
    print(f"onnx vs torch: cold {result['cold_speedup']:.1f}x faster, warm "
          f"{result['warm_speedup']:.1f}x; |p_onnx - p_torch| {result['p_positive_abs_diff']:.1e}")
    if "package" in result:
        pkg = result["package"]
        print(f"package: {pkg['zipped_mb']:.1f} MB zipped, {pkg['unzipped_mb']:.1f} MB unzipped; "
              f"largest parts (MB) {pkg['unzipped_mb_by_part']}")
    for name, met in result["targets_met"].items():
        print(f"target {name} {TARGETS[name]:g}: {'met' if met else 'NOT met'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REALDATA,
                        help="folder whose first clip is tiled into the 10 s request "
                        f"(default: %(default)s, falling back to {SAMPLE})")
    parser.add_argument("--clip-rate", type=int, default=48000,
                        help="sample rate of the request clip, like a phone upload "
                        "(default: %(default)s)")
    parser.add_argument("--cold", type=int, default=5,
                        help="new processes per path (default: %(default)s)")
    parser.add_argument("--warm", type=int, default=30,
                        help="warm calls per process (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1,
                        help="intra-op threads for onnxruntime and torch; a Lambda of up to "
                        "1769 MB has at most one vCPU (default: %(default)s)")
    parser.add_argument("--no-package", action="store_true",
                        help="skip the package size (the first run pip-downloads the wheels)")
    parser.add_argument("--out", type=Path, default=RESULT,
                        help="JSON result file (default: %(default)s)")
    parser.add_argument("--child", choices=["onnx", "torch"], help=argparse.SUPPRESS)
    parser.add_argument("--clip", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--spawned-at", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child == "onnx":
        print(json.dumps(child_onnx(args.clip, args.spawned_at, args.warm)))
        return 0
    if args.child == "torch":
        print(json.dumps(child_torch(args.clip, args.spawned_at, args.warm, args.threads)))
        return 0

    missing = [p for p in (LAMBDA_MODEL / "model.onnx", LAMBDA_MODEL / "model.json", TORCH_MODEL)
               if not p.is_file()]
    if missing:
        print(f"skipped: {', '.join(map(str, missing))} not found; run `make repro` first")
        return 0
    dataset = pick_dataset(args.data, SAMPLE)
    if dataset is None:
        print(f"skipped: neither {args.data} nor {SAMPLE} has a labels.csv "
              "(run `python -m coughlab.sample data`)")
        return 0

    from coughlab.atomic import atomic_write_text

    result = {"benchmark": "lambda_latency", "dataset": repo_relative(dataset),
              "clip_sample_rate": args.clip_rate, "cold_repeats": args.cold,
              "warm_calls": args.warm, "threads": args.threads, **machine_info(),
              "load_average_before": load_average(), "targets": TARGETS}
    with tempfile.TemporaryDirectory() as tmp:
        clip = make_clip(dataset, Path(tmp) / "request.wav", 10.0, args.clip_rate)
        result.update(measure(clip, args.cold, args.warm, args.threads))
    if not args.no_package:
        result["package"] = package_size()
    result["load_average_after"] = load_average()
    result["targets_met"] = target_checks(result)
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print_table(result)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
