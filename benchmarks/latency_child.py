"""The measured process of lambda_latency.py: one cold start, then warm calls, reported as one
JSON line on stdout.

Its own cost is part of every cold start it measures, so it is small and imports only what
each path needs: run as `python latency_child.py '<json arguments>'` (lambda_latency.run_child).
- onnx: the handler.py of a deployment package's task root, as the Lambda runtime imports it;
- torch: coughlab's ServingModel from the graph's model.pt.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path

# Warm phases on two clocks: wall time, what Lambda bills, and this thread's CPU time, which a
# busy shared machine inflates far less (time the process waits for a core is not in it).
CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}
# onnxruntime kernels of the network (after its NCHWc rewrite); all others are the featurizer's
NETWORK_OPS = {"Conv", "FusedConv", "MaxPool", "BatchNormalization", "Relu", "Gemm", "Softmax",
               "ReorderInput", "ReorderOutput", "ReduceMean", "GlobalAveragePool"}


def child_onnx(task_root: Path, clip: Path, spawned_at: float, n_warm: int,
               n_profile: int) -> dict:
    """What a Lambda container does: import the handler, then serve requests."""
    import base64

    t0 = time.perf_counter()
    sys.path.insert(0, str(task_root))
    import handler

    t1 = time.perf_counter()
    event = {"body": base64.b64encode(clip.read_bytes()).decode(), "isBase64Encoded": True,
             "headers": {"content-type": "application/octet-stream"}}
    first = handler.handler(event)
    first_done = time.time()
    t2 = time.perf_counter()
    if first["statusCode"] != 200:
        raise RuntimeError(f"handler answered {first}")
    cold = {"cold_s": first_done - spawned_at, "import_s": t1 - t0,
            "load_and_first_call_s": t2 - t1}
    if not n_warm:
        return cold
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
    return {**cold, "p_positive": json.loads(first["body"])["p_positive"], "warm_s": warm,
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
    import tempfile

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
    import torch

    from coughlab.audio import read_soundfile, resample, to_mono
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
        data, sr = read_soundfile(io.BytesIO(base64.b64decode(body)))
        mono = to_mono(data)
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


def main() -> None:
    args = json.loads(sys.argv[1])
    if args["kind"] == "torch":
        report = child_torch(Path(args["clip"]), Path(args["model"]), args["spawned_at"],
                             args["warm"], args["threads"])
    else:
        report = child_onnx(Path(args["task_root"]), Path(args["clip"]), args["spawned_at"],
                            args["warm"], args["profile"])
    print(json.dumps(report))


if __name__ == "__main__":
    main()
