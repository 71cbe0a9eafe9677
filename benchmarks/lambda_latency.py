"""Lambda latency: cold start and warm latency of the onnxruntime handler vs a torch path, for
the sample's one-network graph (x1) and a three-network ensemble graph (x3, what real data
ships: conf/ensemble/full.yaml), all four kinds of process alternating in one run.

Both graphs are exported here, as export-graph does, from build/model/model.pt: x1 the model
itself (the same bytes as build/lambda/model.onnx when that is current); x3 an Ensemble of
three networks of its architecture (its trained weights and two seeded perturbations of
them: the timing needs the shapes, not a trained ensemble), saved with nets.save_model. Each
graph is served with build/lambda/model.json.

Cold start = a NEW Python process, from spawn to the first prediction on a 10 s clip:
- onnx:  import lambda/handler.py (MODEL_DIR = the graph's folder) and call handler.handler()
         with the clip as a base64 body, as the Lambda runtime does; the first call loads the
         session;
- torch: import torch + coughlab, load the graph's model.pt into coughlab.export.ServingModel
         (same featurizer + network), decode and resample the same body, predict.
Warm latency = the same call repeated in that process. Where warm time goes (median per
call): decode (base64 + audio decode + mono mixdown), resample (the handler: only the span the
graph reads, when model.json gives input_seconds; torch: the whole clip, as the pipeline does)
and graph (onnxruntime session / torch model), in wall time and in the thread's CPU time; and
inside the onnx graph, from onnxruntime's profiler, the share of the featurizer's and the
network's kernels.

Package size: lambda/requirements.txt installed for manylinux x86_64 / CPython 3.12 and zipped
with handler.py and build/lambda by coughlab.aws.deploy (the code `make deploy-lambda` uses), so
the size measured is the size shipped.

Targets (issue 28), each graph: onnx cold <= 0.3 s and >= 20x faster than torch, warm >= 2.5x
faster than torch, |p_onnx - p_torch| <= 1e-5, every answer to the same request the same
bytes; the x3 graph <= 1.3x the decode + resample of the same call. Unzipped package <= 250 MB
(Lambda's hard limit; the zip goes up via S3, so the 50 MB direct-upload limit does not bind).
"""
from __future__ import annotations

# Only the standard library at module level: this file is also the measured child process,
# and its own imports must not count towards either path's cold start.
import argparse
import hashlib
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
GRAPHS = {"x1": 1, "x3": 3}  # graph name: networks in it
TARGETS = {"onnx_cold_s": 0.3, "cold_speedup": 20.0, "warm_speedup": 2.5,
           "abs_dp": 1e-5, "x3_graph_per_decode_resample": 1.3, "unzipped_mb": 250.0}
MB = 1024 * 1024  # MiB, the unit of Lambda's size limits
# Warm phases on two clocks: wall time, what Lambda bills, and this thread's CPU time, which a
# busy shared machine inflates far less (time the process waits for a core is not in it).
CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}
PERTURBATION = 0.05  # of each weight tensor's sd: the x3 members differ, as trained ones do
# onnxruntime kernels of the network (after its NCHWc rewrite); all others are the featurizer's
NETWORK_OPS = {"Conv", "FusedConv", "MaxPool", "BatchNormalization", "Relu", "Gemm", "Softmax",
               "ReorderInput", "ReorderOutput", "ReduceMean", "GlobalAveragePool"}


def child_onnx(clip: Path, spawned_at: float, n_warm: int, n_profile: int) -> dict:
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
    answers = {digest(first["body"])}
    warm = []
    for _ in range(n_warm):
        start = time.perf_counter()
        answer = handler.handler(event)
        warm.append(time.perf_counter() - start)
        answers.add(digest(answer["body"]))
    session, meta = handler.load_model()
    phases = {clock: {"decode": [], "resample": [], "graph": []} for clock in CLOCKS}
    for _ in range(n_warm):  # the steps of handler.predict, timed one by one
        marks = [now()]
        wave, sr = handler.decode(base64.b64decode(event["body"]))
        marks.append(now())
        x = handler.graph_input(wave, sr, meta["sample_rate"], meta.get("input_seconds"))
        marks.append(now())
        session.run([meta["output"]], {meta["input"]: x[None, :]})
        marks.append(now())
        record(phases, marks)
    return {"cold_s": first_done - spawned_at, "import_s": t1 - t0,
            "load_and_first_call_s": t2 - t1,
            "p_positive": json.loads(first["body"])["p_positive"], "warm_s": warm,
            "warm_phases": phases, "answer_digests": sorted(answers),
            "graph_kernels": kernel_shares(handler, x[None, :], n_profile)}


def now() -> dict[str, float]:
    return {clock: read() for clock, read in CLOCKS.items()}


def record(phases: dict, marks: list[dict[str, float]]) -> None:
    """Append the time between consecutive `marks` to each phase, on every clock."""
    for clock, named in phases.items():
        for (name, values), start, end in zip(named.items(), marks, marks[1:]):
            values.append(end[clock] - start[clock])


def digest(body: str) -> str:
    return hashlib.sha256(body.encode()).hexdigest()


def kernel_shares(handler, x, runs: int) -> dict:
    """Share of the graph's kernel time per onnxruntime op type, and the featurizer's and
    the network's: `runs` calls of a profiling session set up as the handler's."""
    import onnxruntime as ort

    _, meta = handler.load_model()
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(os.environ.get("ORT_THREADS", 1))
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.enable_profiling = True
    with tempfile.TemporaryDirectory() as tmp:
        options.profile_file_prefix = str(Path(tmp) / "profile")
        session = ort.InferenceSession(str(handler.MODEL_DIR / meta["onnx_file"]), options,
                                       providers=["CPUExecutionProvider"])
        for _ in range(runs):
            session.run([meta["output"]], {meta["input"]: x})
        events = json.loads(Path(session.end_profiling()).read_text())
    by_op: dict[str, float] = {}
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            op = event["args"]["op_name"]
            by_op[op] = by_op.get(op, 0.0) + event["dur"]
    total = sum(by_op.values())
    network = sum(v for k, v in by_op.items() if k in NETWORK_OPS)
    return {"network": network / total, "featurizer": 1 - network / total,
            "by_op": {k: v / total for k, v in sorted(by_op.items(), key=lambda kv: -kv[1])}}


def timed(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def child_torch(clip: Path, model: Path, spawned_at: float, n_warm: int, threads: int) -> dict:
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
    net, audio = load_model(model)
    serving = ServingModel(net, audio)
    t2 = time.perf_counter()
    body = base64.b64encode(clip.read_bytes()).decode()
    phases = {clock: {"decode": [], "resample": [], "graph": []} for clock in CLOCKS}

    def predict() -> float:
        marks = [now()]
        data, sr = sf.read(io.BytesIO(base64.b64decode(body)), dtype="float32", always_2d=True)
        mono = to_mono(data.T)
        marks.append(now())
        wave = resample(mono, sr, audio.sample_rate)
        marks.append(now())
        with torch.inference_mode():
            p = float(serving(torch.from_numpy(wave)[None, :])[0])
        marks.append(now())
        record(phases, marks)
        return p

    p = predict()
    first_done = time.time()
    t3 = time.perf_counter()
    warm = [timed(predict) for _ in range(n_warm)]
    return {"cold_s": first_done - spawned_at, "import_s": t1 - t0, "load_s": t2 - t1,
            "first_call_s": t3 - t2, "p_positive": p, "warm_s": warm,
            "warm_phases": {clock: {k: v[1:] for k, v in named.items()}
                            for clock, named in phases.items()}}


def export_graphs(model: Path, lambda_dir: Path, out: Path) -> dict[str, dict[str, Path]]:
    """Per graph name: its serving folder (model.onnx + model.json) and its model.pt."""
    import dataclasses
    import shutil

    import torch

    from coughlab.config import ModelConfig, load_params
    from coughlab.export import GRAPH_FILE, export_onnx
    from coughlab.nets import MODEL_FILE, Ensemble, build_net, load_model, save_model

    net, audio = load_model(model)
    saved = torch.load(model, map_location="cpu", weights_only=True)
    params = dataclasses.replace(load_params(REPO / "params.yaml"), audio=audio,
                                 model=ModelConfig(**saved["model"]))
    graphs = {}
    for name, members in GRAPHS.items():
        folder = out / name
        nets = [net] + [perturbed(net, build_net(params.model), seed)
                        for seed in range(1, members)]
        saved_model = save_model(Ensemble(nets) if members > 1 else net, params, folder)
        export_onnx(*load_model(saved_model), folder / GRAPH_FILE)
        shutil.copy(lambda_dir / "model.json", folder / "model.json")
        graphs[name] = {"model_dir": folder, "model": folder / MODEL_FILE}
    return graphs


def perturbed(net, blank, seed: int):
    """`blank` with `net`'s weights, each conv and linear weight moved by seeded noise."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    state = {k: v + PERTURBATION * v.std() * torch.randn(v.shape, generator=generator)
             if k.endswith("weight") and v.dim() > 1 else v
             for k, v in net.state_dict().items()}
    blank.load_state_dict(state)
    return blank.eval()


def run_child(kind: str, graph: dict[str, Path], clip: Path, args) -> dict:
    """Spawn this file as a fresh process measuring one `kind`; returns its JSON report."""
    env = {**os.environ, "MODEL_DIR": str(graph["model_dir"]), "ORT_THREADS": str(args.threads),
           "OMP_NUM_THREADS": str(args.threads),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"),
                                                       os.environ.get("PYTHONPATH")]))}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind, "--clip", str(clip),
           "--torch-model", str(graph["model"]), "--warm", str(args.warm), "--threads",
           str(args.threads), "--profile", str(args.profile), "--spawned-at", repr(time.time())]
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
            "warm_phases_median_s": {
                clock: {k: statistics.median(v for r in reports for v in r["warm_phases"][clock][k])
                        for k in named}
                for clock, named in reports[0]["warm_phases"].items()},
            "p_positive": reports[0]["p_positive"]}


def graph_summary(reports: dict[str, list[dict]]) -> dict:
    """One graph's two paths, their ratios, its answers and where its graph time goes."""
    paths = {kind: summarize(r) for kind, r in reports.items()}
    onnx = paths["onnx"]["warm_phases_median_s"]
    per_decode = {clock: p["graph"] / (p["decode"] + p["resample"]) for clock, p in onnx.items()}
    kernels = [r["graph_kernels"] for r in reports["onnx"]]
    return {
        "paths": paths,
        "cold_speedup": paths["torch"]["cold"]["median_s"] / paths["onnx"]["cold"]["median_s"],
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


def measure(graphs: dict[str, dict[str, Path]], clip: Path, args) -> dict:
    """All four kinds of process, alternating, `args.cold` times."""
    reports = {name: {"onnx": [], "torch": []} for name in graphs}
    for i in range(args.cold):
        print(f"cold start {i + 1}/{args.cold} ...", file=sys.stderr)
        for name, graph in graphs.items():
            for kind in reports[name]:
                reports[name][kind].append(run_child(kind, graph, clip, args))
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
    if "package" in result:
        checks["unzipped_mb"] = result["package"]["unzipped_mb"] <= TARGETS["unzipped_mb"]
    return checks


def print_table(result: dict) -> None:
    print(f"\n10 s clip at {result['clip_sample_rate']} Hz, {result['cold_repeats']} cold "
          f"processes per path and graph, {result['warm_calls']} warm calls each, "
          f"{result['threads']} thread(s), load average {result['load_average_before']:.2f}")
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
    if "package" in result:
        pkg = result["package"]
        print(f"package: {pkg['zipped_mb']:.1f} MB zipped, {pkg['unzipped_mb']:.1f} MB unzipped; "
              f"largest parts (MB) {pkg['unzipped_mb_by_part']}")
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
    parser.add_argument("--no-package", action="store_true",
                        help="skip the package size (the first run pip-downloads the wheels)")
    parser.add_argument("--out", type=Path, default=RESULT,
                        help="JSON result file (default: %(default)s)")
    parser.add_argument("--child", choices=["onnx", "torch"], help=argparse.SUPPRESS)
    parser.add_argument("--clip", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--torch-model", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--spawned-at", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child == "onnx":
        print(json.dumps(child_onnx(args.clip, args.spawned_at, args.warm, args.profile)))
        return 0
    if args.child == "torch":
        print(json.dumps(child_torch(args.clip, args.torch_model, args.spawned_at, args.warm,
                                     args.threads)))
        return 0

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

    result = {"benchmark": "lambda_latency", "dataset": repo_relative(dataset),
              "clip_sample_rate": args.clip_rate, "cold_repeats": args.cold,
              "warm_calls": args.warm, "threads": args.threads, **machine_info(),
              "load_average_before": load_average(), "targets": TARGETS}
    with tempfile.TemporaryDirectory() as tmp:
        print("exporting the x1 and x3 graphs ...", file=sys.stderr)
        graphs = export_graphs(TORCH_MODEL, LAMBDA_MODEL, Path(tmp))
        clip = make_clip(dataset, Path(tmp) / "request.wav", 10.0, args.clip_rate)
        result["graphs"] = measure(graphs, clip, args)
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
