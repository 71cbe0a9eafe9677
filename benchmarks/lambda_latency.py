"""Lambda latency: cold start and warm latency of the onnxruntime handler vs a torch path, for
the sample's one-network graph (x1) and a three-network ensemble graph (x3, what real data
ships: conf/ensemble/full.yaml), all four kinds of process alternating in one run.

Both graphs are exported here, as export-graph does, from build/model/model.pt: x1 the model
itself (the same bytes as build/lambda/model.onnx when that is current); x3 an Ensemble of
three networks of its architecture (its trained weights and two seeded perturbations of
them: the timing needs the shapes, not a trained ensemble), saved with nets.save_model. Each
graph is served with build/lambda/model.json.

Cold start = a NEW Python process, from spawn to the first prediction on a 10 s clip:
- onnx:  as Lambda runs the zip: the deployment package (coughlab.aws.deploy's build_zip, the
         code `make deploy-lambda` uses) unpacked into a task root, CPython 3.12 (the runtime's)
         writing no bytecode there (Lambda's task root is read-only); import its handler.py
         (MODEL_DIR = the graph's folder) and call handler.handler() with the clip as a base64
         body, as the Lambda runtime does; the first call loads the session. Also the same
         package zipped without its bytecode (`onnx-no-bytecode`, cold start only: what
         shipped before the zip carried it);
- torch: import torch + coughlab, load the graph's model.pt into coughlab.export.ServingModel
         (same featurizer + network), decode (as combine does: coughlab.audio) and resample
         the same body, predict.
Warm latency = the same call repeated in that process. Where warm time goes (median per
call): decode (base64 + audio decode + mono mixdown), resample (the handler: only the span the
graph reads, when model.json gives input_seconds; torch: the whole clip, as the pipeline does)
and graph (onnxruntime session / torch model), in wall time and in the thread's CPU time; and
inside the onnx graph, from onnxruntime's profiler, the share of the featurizer's and the
network's kernels.

Package size: that package's, lambda/requirements.txt installed for manylinux x86_64 / CPython
3.12 and zipped with handler.py and build/lambda: the size measured is the size shipped.

Targets (issue 28), each graph: onnx cold <= 0.3 s and >= 20x faster than torch, warm >= 2.5x
faster than torch, |p_onnx - p_torch| <= 1e-5, every answer to the same request the same
bytes; the x3 graph <= 1.3x the decode + resample of the same call. Unzipped package <= 250 MB
(Lambda's hard limit; the zip goes up via S3, so the 50 MB direct-upload limit does not bind).
"""
from __future__ import annotations

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
CHILD = Path(__file__).with_name("latency_child.py")  # the measured process
GRAPHS = {"x1": 1, "x3": 3}  # graph name: networks in it
TARGETS = {"onnx_cold_s": 0.3, "cold_speedup": 20.0, "warm_speedup": 2.5,
           "abs_dp": 1e-5, "x3_graph_per_decode_resample": 1.3, "unzipped_mb": 250.0}
MB = 1024 * 1024  # MiB, the unit of Lambda's size limits
PERTURBATION = 0.05  # of each weight tensor's sd: the x3 members differ, as trained ones do


def export_graphs(model: Path, lambda_dir: Path, out: Path, windows: int | None = None,
                  width: int | None = None) -> tuple[dict[str, dict[str, Path]], dict[str, int]]:
    """Per graph name: its serving folder (model.onnx + model.json) and its model.pt; and the
    windows per clip and network width the graphs have. With `windows` or `width`, graphs of
    that many windows per clip or of networks that wide (seeded, untrained) instead of the
    model's: what they would cost, not what they answer."""
    import dataclasses
    import shutil

    import torch

    from coughlab.config import ModelConfig, load_params
    from coughlab.export import GRAPH_FILE, export_onnx
    from coughlab.nets import MODEL_FILE, Ensemble, build_net, load_model, save_model

    net, audio = load_model(model)
    audio = dataclasses.replace(audio, windows=windows or audio.windows)
    saved = torch.load(model, map_location="cpu", weights_only=True)
    params = dataclasses.replace(load_params(REPO / "params.yaml"), audio=audio,
                                 model=ModelConfig(**saved["model"]))
    if width:
        params = dataclasses.replace(params, model=dataclasses.replace(params.model, width=width))
        torch.manual_seed(0)
        net = build_net(params.model).eval()
    graphs = {}
    for name, members in GRAPHS.items():
        folder = out / name
        nets = [net] + [perturbed(net, build_net(params.model), seed)
                        for seed in range(1, members)]
        saved_model = save_model(Ensemble(nets) if members > 1 else net, params, folder)
        export_onnx(*load_model(saved_model), folder / GRAPH_FILE)
        shutil.copy(lambda_dir / "model.json", folder / "model.json")
        graphs[name] = {"model_dir": folder, "model": folder / MODEL_FILE}
    return graphs, {"windows": params.audio.windows, "width": params.model.width}


def perturbed(net, blank, seed: int):
    """`blank` with `net`'s weights, each conv and linear weight moved by seeded noise."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    state = {k: v + PERTURBATION * v.std() * torch.randn(v.shape, generator=generator)
             if k.endswith("weight") and v.dim() > 1 else v
             for k, v in net.state_dict().items()}
    blank.load_state_dict(state)
    return blank.eval()


def run_child(kind: str, graph: dict[str, Path], clip: Path, packages: dict[str, Path],
              args) -> dict:
    """Spawn this file as a fresh process measuring one `kind`; returns its JSON report.

    torch runs in this interpreter with coughlab; the onnx kinds in the runtime's CPython with
    only their package's task root on its path, writing no bytecode (as on Lambda).
    """
    env = {**os.environ, "MODEL_DIR": str(graph["model_dir"]), "ORT_THREADS": str(args.threads),
           "OMP_NUM_THREADS": str(args.threads)}
    if kind == "torch":
        python, task_root = sys.executable, Path()
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"),
                                                          os.environ.get("PYTHONPATH")]))
    else:
        python, task_root = packages["python"], packages[kind]
        env.pop("PYTHONPATH", None)
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    arguments = {"kind": kind, "clip": str(clip), "task_root": str(task_root),
                 "model": str(graph["model"]), "threads": args.threads,
                 "warm": args.warm if kind != "onnx-no-bytecode" else 0,
                 "profile": args.profile if kind == "onnx" else 0, "spawned_at": time.time()}
    cmd = [str(python), str(CHILD), json.dumps(arguments)]
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


def build_packages(out: Path) -> tuple[dict[str, Path], dict]:
    """The deployment zip, with and without its bytecode, each unpacked into a task root under
    `out`; the runtime's CPython; and the shipped zip's size, zipped, unzipped and by part."""
    import zipfile

    from coughlab.aws.deploy.package import build_zip, ensure_dependencies, runtime_python

    deps = ensure_dependencies(REQUIREMENTS, DEPS_CACHE)
    packages: dict[str, Path] = {"python": runtime_python()}
    for kind, python in (("onnx", packages["python"]), ("onnx-no-bytecode", None)):
        package = build_zip(deps, HANDLER, LAMBDA_MODEL, out / f"{kind}.zip", python=python)
        with zipfile.ZipFile(package.path) as zf:
            zf.extractall(out / kind)
            if python is not None:
                shipped, files = package, [(i.filename, i.file_size) for i in zf.infolist()]
        package.path.unlink()
        packages[kind] = out / kind
    parts: dict[str, int] = {}
    for name, size in files:
        top = name.split("/")[0]
        top = "handler + model/" if top in ("handler.py", "page.html", "model") else top
        top = re.split(r"[.-]", top)[0]  # numpy.libs -> numpy
        parts[top] = parts.get(top, 0) + size
    pins = [line.strip() for line in REQUIREMENTS.read_text().splitlines()
            if line.strip() and not line.startswith("#")]
    return packages, {
        "requirements": pins, "bytecode_files": sum(name.endswith(".pyc") for name, _ in files),
        "zipped_mb": shipped.zipped_bytes / MB, "unzipped_mb": shipped.unzipped_bytes / MB,
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
            "warm_phases_median_s": {
                clock: {k: statistics.median(v for r in reports for v in r["warm_phases"][clock][k])
                        for k in named}
                for clock, named in reports[0]["warm_phases"].items()},
            "p_positive": reports[0]["p_positive"]}


def graph_summary(reports: dict[str, list[dict]]) -> dict:
    """One graph's two paths, their ratios, its answers and where its graph time goes; and the
    cold start of its package without bytecode."""
    paths = {kind: summarize(reports[kind]) for kind in ("onnx", "torch")}
    no_bytecode = latency_stats([r["cold_s"] for r in reports["onnx-no-bytecode"]])
    onnx = paths["onnx"]["warm_phases_median_s"]
    per_decode = {clock: p["graph"] / (p["decode"] + p["resample"]) for clock, p in onnx.items()}
    kernels = [r["graph_kernels"] for r in reports["onnx"]]
    return {
        "paths": paths,
        "cold_speedup": paths["torch"]["cold"]["median_s"] / paths["onnx"]["cold"]["median_s"],
        "onnx_no_bytecode_cold": no_bytecode,
        "bytecode_cold_speedup": no_bytecode["median_s"] / paths["onnx"]["cold"]["median_s"],
        "warm_speedup": paths["torch"]["warm"]["median_s"] / paths["onnx"]["warm"]["median_s"],
        "graph_per_decode_resample": per_decode,
        "p_positive_abs_diff": abs(paths["onnx"]["p_positive"] - paths["torch"]["p_positive"]),
        "answer_bytes_identical": len({d for r in reports["onnx"]
                                       for d in r["answer_digests"]}) == 1,
        "graph_kernel_share_median": {
            "featurizer": statistics.median(k["featurizer"] for k in kernels),
            "network": statistics.median(k["network"] for k in kernels),
            "by_op": {op: statistics.median(k["by_op"].get(op, 0.0) for k in kernels)
                      for op in list(kernels[0]["by_op"])[:8]}},
    }


def measure(graphs: dict[str, dict[str, Path]], clip: Path, packages: dict[str, Path],
            args) -> dict:
    """All six kinds of process, alternating, `args.cold` times."""
    reports = {name: {"onnx": [], "torch": [], "onnx-no-bytecode": []} for name in graphs}
    for i in range(args.cold):
        print(f"cold start {i + 1}/{args.cold} ...", file=sys.stderr)
        for name, graph in graphs.items():
            for kind in reports[name]:
                reports[name][kind].append(run_child(kind, graph, clip, packages, args))
    return {name: graph_summary(r) for name, r in reports.items()}


def target_checks(result: dict) -> dict[str, bool]:
    checks = {}
    for name, g in result["graphs"].items():
        checks[f"{name}_onnx_cold_s"] = g["paths"]["onnx"]["cold"]["median_s"] <= TARGETS[
            "onnx_cold_s"]
        checks[f"{name}_cold_speedup"] = g["cold_speedup"] >= TARGETS["cold_speedup"]
        checks[f"{name}_warm_speedup"] = g["warm_speedup"] >= TARGETS["warm_speedup"]
        checks[f"{name}_abs_dp"] = g["p_positive_abs_diff"] <= TARGETS["abs_dp"]
        checks[f"{name}_answer_bytes_identical"] = g["answer_bytes_identical"]
    for clock, ratio in result["graphs"]["x3"]["graph_per_decode_resample"].items():
        checks[f"x3_graph_per_decode_resample_{clock}"] = (
            ratio <= TARGETS["x3_graph_per_decode_resample"])
    checks["unzipped_mb"] = result["package"]["unzipped_mb"] <= TARGETS["unzipped_mb"]
    return checks


def print_table(result: dict) -> None:
    print(f"\n10 s clip at {result['clip_sample_rate']} Hz, {result['cold_repeats']} cold "
          f"processes per path and graph, {result['warm_calls']} warm calls each, "
          f"{result['threads']} thread(s), {result['windows']} windows per clip, networks "
          f"{result['width']} wide, load average "
          f"{result['load_average_before']:.2f}; "
          f"onnx: the package on CPython {result['onnx_python']}, torch: this venv's "
          f"{result['python']}")
    print(f"{'graph':<6}{'path':<7}{'cold median s':>14}{'cold min s':>11}{'warm median ms':>15}"
          f"{'warm p95 ms':>12}   warm per call, median ms (CPU ms)")
    for name, g in result["graphs"].items():
        for kind, r in g["paths"].items():
            wall, cpu = r["warm_phases_median_s"]["wall"], r["warm_phases_median_s"]["cpu"]
            phases = ", ".join(f"{k} {wall[k] * 1e3:.2f} ({cpu[k] * 1e3:.2f})" for k in wall)
            print(f"{name:<6}{kind:<7}{r['cold']['median_s']:>14.3f}{r['cold']['min_s']:>11.3f}"
                  f"{r['warm']['median_s'] * 1e3:>15.1f}{r['warm']['p95_s'] * 1e3:>12.1f}   "
                  f"{phases}")
    for name, g in result["graphs"].items():
        share = g["graph_kernel_share_median"]
        ratio = g["graph_per_decode_resample"]
        print(f"{name}: onnx vs torch cold {g['cold_speedup']:.1f}x, warm {g['warm_speedup']:.1f}x;"
              f" graph {ratio['wall']:.2f}x decode + resample ({ratio['cpu']:.2f}x in CPU time);"
              f" |dp| "
              f"{g['p_positive_abs_diff']:.1e}; same answer bytes: {g['answer_bytes_identical']};"
              f" graph kernels: featurizer {share['featurizer']:.0%}, network "
              f"{share['network']:.0%}")
    for name, g in result["graphs"].items():
        print(f"{name}: the package without its bytecode starts cold in "
              f"{g['onnx_no_bytecode_cold']['median_s']:.3f} s (median): the bytecode makes the "
              f"cold start {g['bytecode_cold_speedup']:.2f}x faster")
    pkg = result["package"]
    print(f"package: {pkg['zipped_mb']:.1f} MB zipped, {pkg['unzipped_mb']:.1f} MB unzipped "
          f"({pkg['bytecode_files']} .pyc files); largest parts (MB) {pkg['unzipped_mb_by_part']}")
    for name, met in result["targets_met"].items():
        print(f"target {name}: {'met' if met else 'NOT met'}")


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
                        help="new processes per path and graph (default: %(default)s)")
    parser.add_argument("--warm", type=int, default=30,
                        help="warm calls per process (default: %(default)s)")
    parser.add_argument("--profile", type=int, default=10,
                        help="profiled graph calls per onnx process (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1,
                        help="intra-op threads for onnxruntime and torch; a Lambda of up to "
                        "1769 MB has at most one vCPU (default: %(default)s)")
    parser.add_argument("--windows", type=int,
                        help="export the graphs with this many windows per clip instead of the "
                        "model's audio.windows: what a smaller model would cost (its answers "
                        "are not the model's; default: the model's)")
    parser.add_argument("--width", type=int,
                        help="export the graphs with networks of this model.width (seeded, "
                        "untrained) instead of the model's: what a smaller network would cost "
                        "(default: the model's)")
    parser.add_argument("--out", type=Path, default=RESULT,
                        help="JSON result file (default: %(default)s)")
    args = parser.parse_args(argv)

    missing = [p for p in (LAMBDA_MODEL / "model.json", TORCH_MODEL) if not p.is_file()]
    if missing:
        print(f"skipped: {', '.join(map(str, missing))} not found; run `make repro` first")
        return 0
    dataset = pick_dataset(args.data, SAMPLE)
    if dataset is None:
        print(f"skipped: neither {args.data} nor {SAMPLE} has a labels.csv "
              "(run `python -m coughlab.sample data`)")
        return 0

    from coughlab.atomic import atomic_write_text
    from coughlab.aws.deploy import DeployError

    result = {"benchmark": "lambda_latency", "dataset": repo_relative(dataset),
              "clip_sample_rate": args.clip_rate, "cold_repeats": args.cold,
              "warm_calls": args.warm, "threads": args.threads, **machine_info(),
              "load_average_before": load_average(), "targets": TARGETS}
    with tempfile.TemporaryDirectory() as tmp:
        print("building the deployment package (the first run pip-downloads the wheels) ...",
              file=sys.stderr)
        try:
            packages, result["package"] = build_packages(Path(tmp))
        except DeployError as err:
            print(f"skipped: {err}")
            return 0
        result["onnx_python"] = subprocess.run(
            [packages["python"], "-c", "import platform; print(platform.python_version())"],
            capture_output=True, text=True, check=True).stdout.strip()
        print("exporting the x1 and x3 graphs ...", file=sys.stderr)
        graphs, shape = export_graphs(TORCH_MODEL, LAMBDA_MODEL, Path(tmp), args.windows,
                                      args.width)
        result |= shape
        clip = make_clip(dataset, Path(tmp) / "request.wav", 10.0, args.clip_rate)
        result["graphs"] = measure(graphs, clip, packages, args)
    result["load_average_after"] = load_average()
    result["targets_met"] = target_checks(result)
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print_table(result)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
