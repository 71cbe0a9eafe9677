import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from coughlab.export import ServingModel, onnx_predict, onnx_session
from coughlab.nets import load_model
from coughlab.provenance import provenance
from coughlab.stages.export_lambda import export_lambda

from helpers import conf

ROOT = Path(__file__).resolve().parents[1]
QUALITY = conf().data.quality


@pytest.mark.parametrize("batch,samples", [(1, 1), (1, 800), (2, 48000), (3, 48001), (1, 160000)])
def test_onnx_matches_pytorch(exported_model, batch, samples):
    """The ONNX graph (featurizer inside) gives PyTorch's probabilities at any length."""
    net, audio = load_model(exported_model["model_pt"])
    noise = np.random.default_rng(samples).standard_normal((batch, samples))
    wave = (noise * 0.1).astype(np.float32)
    with torch.inference_mode():
        expected = ServingModel(net, audio)(torch.from_numpy(wave)).numpy()
    got = onnx_predict(onnx_session(exported_model["lambda_dir"] / "model.onnx"), wave)
    assert got.shape == (batch,)
    assert np.abs(got - expected).max() <= 1e-4


def test_model_json_records_parity_threshold_rate_and_rules(exported_model):
    meta = json.loads((exported_model["lambda_dir"] / "model.json").read_text())
    assert meta["sample_rate"] == 16000 and meta["threshold"] == 0.5
    # What the gate found that holds on any CPU; the residual itself is only in the log.
    assert meta["parity"] == {"passed": True, "clips": 3, "tolerance": 1e-4,
                              "compared": "original files: lambda/handler.py vs the pipeline"}
    assert meta["input_seconds"] == 30.0  # audio.max_seconds: the graph scores the whole clip
    assert meta["quality"] == {"min_seconds": 0.3, "silence_dbfs": -60.0}
    assert len(meta["version"]) == 12


def test_handler_hears_what_the_pipeline_heard_from_the_original_files(exported_model):
    """mp3 8 kHz stereo, mp3 48 kHz mono, wav 44.1 kHz: lambda/handler.py on the original bytes
    gives the pipeline's P(positive) (fetch -> combine -> featurize -> network) within 1e-4."""
    from coughlab.stages.export_lambda import lambda_handler, pipeline_scores

    net, _ = load_model(exported_model["model_pt"])
    originals = exported_model["originals"]
    expected = pipeline_scores(net, exported_model["features"], list(originals))
    assert set(expected) == set(originals)
    with lambda_handler(ROOT / "lambda" / "handler.py", exported_model["lambda_dir"]) as handler:
        for path, original in originals.items():
            got = handler.predict(original.read_bytes())["p_positive"]
            assert abs(got - expected[path]) <= 1e-4, (path, got, expected[path])


def test_export_refuses_a_model_the_handler_hears_differently(exported_model, tmp_path):
    """Clips that lost precision in combine (it used to write 16-bit PCM) while the Lambda feeds
    float samples is train/serve skew: the parity gate must stop the export, leaving no output.
    The loss is exaggerated to 6 bits here: this tiny untrained network barely moves at 16."""
    import shutil

    import soundfile as sf

    from coughlab.stages.featurize import featurize

    combined = tmp_path / "combined"
    shutil.copytree(exported_model["combined"], combined)
    for clip in (combined / "clips").iterdir():
        wave, sr = sf.read(clip, dtype="float32")
        sf.write(clip, np.round(wave * 32) / 32, sr, subtype="FLOAT")
    featurize(combined, tmp_path / "features", conf().audio)
    with pytest.raises(RuntimeError, match="disagree"):
        export_lambda(exported_model["graph"], exported_model["model_pt"].parent,
                      exported_model["evaluation"], combined, tmp_path / "features",
                      exported_model["fetched"], ROOT / "lambda" / "handler.py", QUALITY,
                      tmp_path / "lambda", exported_model["data_dir"],
                      tmp_path / "model-record.json", exported_model["params_file"])
    assert not (tmp_path / "lambda").exists() and not (tmp_path / "model-record.json").exists()


def test_parity_gate_covers_every_test_clip(exported_model, tmp_path):
    """A difference in the 34th test recording stops the export: the gate is not a sample."""
    import pandas as pd
    import soundfile as sf

    from coughlab.stages.combine import process_clip, wav_path
    from coughlab.stages.featurize import featurize

    rng = np.random.default_rng(3)
    (tmp_path / "fetched").mkdir()
    rows = []
    for i in range(34):
        name = f"clip{i:02d}.wav"
        t = np.arange(8000) / 16000
        wave = np.sin(2 * np.pi * (300 + 10 * i) * t) * 0.4 + rng.standard_normal(t.size) * 0.02
        sf.write(tmp_path / "fetched" / name, wave.astype(np.float32), 16000)
        stats = process_clip(tmp_path / "fetched" / name, tmp_path / "combined" / "clips" /
                             wav_path(name), 16000, QUALITY)
        rows.append({"path": wav_path(name), "fetched_path": name, "label": "negative",
                     "subject_id": name, "source": "sample", "split": "test", **stats})
    pd.DataFrame(rows).to_csv(tmp_path / "combined" / "manifest.csv", index=False)
    featurize(tmp_path / "combined", tmp_path / "features", conf().audio)
    # The last original is another recording than the one the pipeline featurized.
    sf.write(tmp_path / "fetched" / rows[-1]["fetched_path"],
             (rng.standard_normal(8000) * 0.3).astype(np.float32), 16000)
    with pytest.raises(RuntimeError, match="disagree"):
        export_lambda(exported_model["graph"], exported_model["model_pt"].parent,
                      exported_model["evaluation"], tmp_path / "combined", tmp_path / "features",
                      tmp_path / "fetched", ROOT / "lambda" / "handler.py", QUALITY,
                      tmp_path / "lambda", exported_model["data_dir"],
                      tmp_path / "model-record.json", exported_model["params_file"])
    assert not (tmp_path / "lambda").exists()


def test_onnx_graph_needs_no_torch_ops(exported_model):
    import onnx

    graph = onnx.load(exported_model["lambda_dir"] / "model.onnx").graph
    domains = {node.domain for node in graph.node}
    assert domains <= {"", "ai.onnx"}, domains
    assert [i.name for i in graph.input] == ["waveform"]
    assert [o.name for o in graph.output] == ["p_positive"]


def test_the_graph_transforms_frames_with_matrix_products(exported_model):
    """onnxruntime's STFT and DFT kernels cost several times the factored DFT's two matrix
    products on the same frames (docs/benchmarks.md)."""
    import onnx

    proto = onnx.load(exported_model["lambda_dir"] / "model.onnx")
    ops = {n.op_type for n in [*proto.graph.node, *(n for f in proto.functions for n in f.node)]}
    assert not ops & {"STFT", "DFT"} and "MatMul" in ops


def test_export_is_byte_identical_across_processes(exported_model, tmp_path):
    """So DVC sees the same model.onnx hash for the same model.pt, run after run."""
    script = ("import sys; from pathlib import Path; from coughlab.nets import load_model; "
              "from coughlab.export import export_onnx; "
              "net, audio = load_model(Path(sys.argv[1])); "
              "export_onnx(net, audio, Path(sys.argv[2]))")
    for name in ("a.onnx", "b.onnx"):
        subprocess.run([sys.executable, "-c", script, str(exported_model["model_pt"]),
                        str(tmp_path / name)], check=True, capture_output=True)
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()


# --- provenance: what the model was derived from, as DVC hashes it -------------------------

def dvc(repo, *args):
    subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, check=True, capture_output=True)


def test_provenance_equals_what_dvc_records(exported_model, tmp_path):
    """data.dvc's md5, dvc.lock's hashes of features and model and its train params, from real
    DVC."""
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    dvc(repo, "init", "-q")
    shutil.copytree(exported_model["data_dir"], repo / "data")
    (repo / "data" / "sub dir").mkdir()
    (repo / "data" / "sub dir" / "clip-a.wav").write_bytes(b"RIFF\r\n\0")  # nested, CRLF bytes
    dvc(repo, "add", "-q", "data")
    shutil.copy(exported_model["params_file"], repo / "params.yaml")
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"train": {
        "cmd": f"cp -r {exported_model['features']} build/features && "
               f"cp -r {exported_model['model_pt'].parent} build/model",
        "params": ["seed", "lr", "model", "train", "audio"],
        "outs": ["build/features", "build/model"]}}}))
    (repo / "build").mkdir()
    dvc(repo, "repro", "-q")

    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]["train"]
    outs = {out["path"]: out["md5"] for out in lock["outs"]}
    got = provenance(repo / "data", repo / "params.yaml", repo / "build" / "features",
                     repo / "build" / "model")
    assert got["data_md5"] == yaml.safe_load((repo / "data.dvc").read_text())["outs"][0]["md5"]
    assert got["features_md5"] == outs["build/features"]
    assert got["model_md5"] == outs["build/model"]
    assert got["params"] == lock["params"]["params.yaml"]
    assert got["data_sources"] == ["local"]


def test_model_json_and_record_carry_the_provenance(exported_model):
    meta = json.loads((exported_model["lambda_dir"] / "model.json").read_text())
    expected = provenance(exported_model["data_dir"], exported_model["params_file"],
                          exported_model["features"], exported_model["model_pt"].parent)
    assert meta["provenance"] == expected
    assert expected["params"]["model"]["width"] == 8 and expected["model_md5"].endswith(".dir")
    assert json.loads(exported_model["record"].read_text()) == {"version": meta["version"],
                                                                "provenance": expected}


def test_unrelated_changes_leave_model_json_unchanged(exported_model, tmp_path, monkeypatch):
    """Another directory, a later time, a git repo with a new commit: the same model.json bytes,
    so DVC's cache and bit-identical reruns hold."""
    monkeypatch.chdir(tmp_path)
    subprocess.run(["git", "init", "-q"], check=True)
    names = ("graph", "model", "evaluation", "combined", "data_dir", "params_file", "features",
             "fetched")
    sources = {name: exported_model["model_pt"].parent if name == "model" else exported_model[name]
               for name in names}
    for name, source in sources.items():
        (shutil.copytree if source.is_dir() else shutil.copy)(source, tmp_path / source.name)
    Path("README.md").write_text("a change that has nothing to do with the model\n")
    subprocess.run(["git", "add", "-A"], check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@e", "commit", "-qm", "x"],
                   check=True)
    local = {name: Path(source.name) for name, source in sources.items()}
    export_lambda(local["graph"], local["model"], local["evaluation"], local["combined"],
                  local["features"], local["fetched"], ROOT / "lambda" / "handler.py", QUALITY,
                  Path("lambda"), local["data_dir"], Path("reports/model.json"),
                  local["params_file"])
    for name in ("model.json", "model.onnx", "model_card.md"):
        shipped = (exported_model["lambda_dir"] / name).read_bytes()
        assert (Path("lambda") / name).read_bytes() == shipped
    assert Path("reports/model.json").read_bytes() == exported_model["record"].read_bytes()


def test_missing_provenance_input_fails_before_writing(exported_model, tmp_path):
    with pytest.raises(FileNotFoundError, match="cannot record its DVC hash"):
        export_lambda(exported_model["graph"], exported_model["model_pt"].parent,
                      exported_model["evaluation"], exported_model["combined"],
                      exported_model["features"], exported_model["fetched"],
                      ROOT / "lambda" / "handler.py", QUALITY, tmp_path / "lambda",
                      tmp_path / "no-data", tmp_path / "model-record.json",
                      exported_model["params_file"])
    assert list(tmp_path.iterdir()) == []


# --- every output a function of the declared inputs, whatever the CPU -----------------------

def cpu_flags() -> set[str]:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    return set(next((line.split(":", 1)[1].split() for line in text.splitlines()
                     if line.startswith("flags")), []))


# Two other machines, as far as forced settings reach on this one: each changes every kernel
# choice evaluate or export-lambda used to inherit from the CPU: torch's ATen vectorisation
# (AVX-512 where this CPU has it; forcing it elsewhere is an illegal instruction), oneDNN's
# convolutions, MKL's and OpenBLAS's BLAS paths, numpy's SIMD loops, and the thread counts of
# torch, MKL and onnxruntime (ORT_THREADS, the handler's).
OTHER_MACHINES = {
    "generic-x86-one-thread": {
        "ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41",
        "OPENBLAS_CORETYPE": "Prescott", "NPY_DISABLE_CPU_FEATURES": "X86_V3 X86_V4",
        "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "ORT_THREADS": "1"},
    "other-blas-three-threads": {
        "ATEN_CPU_CAPABILITY": "avx512" if "avx512f" in cpu_flags() else "avx2",
        "MKL_CBWR": "COMPATIBLE", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2",
        "OPENBLAS_CORETYPE": "Sandybridge",
        "OMP_NUM_THREADS": "3", "MKL_NUM_THREADS": "3", "ORT_THREADS": "3"},
}


@pytest.fixture(scope="module")
def stage_workspace(tmp_path_factory):
    """What evaluate and export-lambda read, from original files: two channels (8 kHz stereo
    phone line, 44.1 kHz app), both labels in every split, and a small untrained CNN."""
    import pandas as pd
    import soundfile as sf

    from coughlab.nets import build_net, save_model
    from coughlab.stages.combine import process_clip, wav_path

    from helpers import write_params

    root = tmp_path_factory.mktemp("dispatch")
    torch.manual_seed(1)
    params = conf("model.width=8")
    save_model(build_net(params.model).eval(), params, root / "model")
    rng = np.random.default_rng(1)
    (root / "fetched").mkdir()
    rows = []
    for split in ("train", "valid", "test"):
        for channel, rate, channels in (("phone", 8000, 2), ("app", 44100, 1)):
            for subject in range(4):
                label = ("negative", "positive")[subject % 2]
                name = f"{split}-{channel}-{subject}.wav"
                t = np.arange(int(rate * rng.uniform(0.8, 3.5))) / rate
                tone = (np.sin(2 * np.pi * rng.uniform(200, 900) * t)
                        * np.exp(-rng.uniform(1, 5) * t))
                wave = np.stack([0.4 * tone + 0.05 * rng.standard_normal(t.size)
                                 for _ in range(channels)], 1)
                sf.write(root / "fetched" / name, wave.astype(np.float32), rate)
                clip = wav_path(name)
                stats = process_clip(root / "fetched" / name, root / "combined" / "clips" / clip,
                                     params.audio.sample_rate, QUALITY)
                rows.append({"path": clip, "fetched_path": name, "label": label,
                             "subject_id": name, "source": "sample", "channel": channel,
                             "split": split, **stats})
    pd.DataFrame(rows).to_csv(root / "combined" / "manifest.csv", index=False)
    (root / "data").mkdir()
    (root / "data" / "labels.csv").write_text("path,label,subject_id,source,channel\n")
    write_params(root, "model.width=8")
    return root


def run_stages(workspace: Path, tag: str, env: dict[str, str]) -> dict[str, bytes]:
    """featurize, export-graph, evaluate and export-lambda as `dvc repro` runs them, in
    processes that see `env`; returns every file the stages write, by path."""
    out = workspace / tag
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), **env}
    commands = [
        ["coughlab.stages.featurize", "--in", "combined", "--out", f"{tag}/features"],
        ["coughlab.stages.export_graph", "--model-dir", "model", "--out", f"{tag}/graph"],
        ["coughlab.stages.evaluate", "--graph-dir", f"{tag}/graph", "--model-dir", "model",
         "--features", f"{tag}/features", "--combined", "combined",
         "--metrics", f"{tag}/metrics.json", "--report", f"{tag}/evaluation.json",
         "--plots", f"{tag}/plots"],
        ["coughlab.stages.export_lambda", "--graph-dir", f"{tag}/graph", "--model-dir", "model",
         "--evaluation", f"{tag}/evaluation.json", "--combined", "combined",
         "--features", f"{tag}/features", "--fetched", "fetched", "--data", "data",
         "--handler", str(ROOT / "lambda" / "handler.py"), "--out", f"{tag}/lambda",
         "--record", f"{tag}/model-record.json"]]
    for command in commands:
        proc = subprocess.run([sys.executable, "-m", *command], cwd=workspace, env=env,
                              capture_output=True, text=True)
        assert proc.returncode == 0, f"{tag}: {' '.join(command[:1])}\n{proc.stderr[-3000:]}"
    return {str(f.relative_to(out)): f.read_bytes() for f in sorted(out.rglob("*")) if f.is_file()}


def test_featurize_evaluate_and_export_are_byte_identical_whatever_the_cpu_dispatch(
        stage_workspace):
    """Fails where the features, inference, the calibration or the parity residual depend on
    the kernels this CPU picks: each forced dispatch stands in for another x86-64 machine (an
    AVX-512 Xeon, an EPYC, another core count). Every output file must come out byte for byte
    the same."""
    reference = run_stages(stage_workspace, "reference", {})
    assert {"features/train.npz", "graph/model.onnx", "metrics.json", "evaluation.json",
            "plots/roc.json", "lambda/model.onnx",
            "lambda/model.json", "lambda/model_card.md", "model-record.json"} <= set(reference)
    differing = {}
    for tag, env in OTHER_MACHINES.items():
        got = run_stages(stage_workspace, tag, env)
        changed = sorted(name for name in reference.keys() | got.keys()
                         if reference.get(name) != got.get(name))
        if changed:
            differing[tag] = changed
    assert differing == {}, differing


# --- what ships is what evaluate scored --------------------------------------------------------

def test_export_lambda_refuses_a_graph_evaluate_did_not_score(exported_model, tmp_path):
    """A graph re-exported after evaluate ran (a changed window_proba, say) never ships under
    the old threshold and metrics: export-lambda names both versions and writes nothing."""
    from coughlab.stages.export_lambda import UnevaluatedGraph

    evaluation = json.loads(exported_model["evaluation"].read_text())
    stale = tmp_path / "evaluation.json"
    stale.write_text(json.dumps({**evaluation, "graph": {"version": "0123456789ab"}}))
    with pytest.raises(UnevaluatedGraph, match="but evaluate scored 0123456789ab"):
        export_lambda(exported_model["graph"], exported_model["model_pt"].parent, stale,
                      exported_model["combined"], exported_model["features"],
                      exported_model["fetched"], ROOT / "lambda" / "handler.py", QUALITY,
                      tmp_path / "lambda", exported_model["data_dir"],
                      tmp_path / "model-record.json", exported_model["params_file"])
    assert not (tmp_path / "lambda").exists() and not (tmp_path / "model-record.json").exists()
    shipped = json.loads((exported_model["lambda_dir"] / "model.json").read_text())
    assert shipped["version"] == evaluation["graph"]["version"]


def test_evaluate_refuses_a_graph_that_does_not_compute_the_trained_network(exported_model,
                                                                            tmp_path):
    """The graph is scored on every valid and test clip against the pinned torch network: a
    graph of other weights (an export that drifted from what was trained) stops evaluate."""
    import pandas as pd

    from coughlab.nets import build_net, predict_proba, save_model
    from coughlab.stages.evaluate import check_graph
    from coughlab.stages.export_graph import export_graph

    torch.manual_seed(123)
    params = conf("model.width=8")
    save_model(build_net(params.model).eval(), params, tmp_path / "other")
    export_graph(tmp_path / "other", tmp_path / "graph")
    net, _ = load_model(exported_model["model_pt"])
    test = np.load(exported_model["features"] / "test.npz")
    scored = pd.DataFrame({"path": test["path"], "p": predict_proba(net, test["x"])})
    agreed = check_graph(exported_model["graph"] / "model.onnx",
                         exported_model["combined"] / "clips", scored)
    assert agreed["clips"] == len(scored) and agreed["tolerance"] == 1e-5
    with pytest.raises(RuntimeError, match="disagrees with the trained network"):
        check_graph(tmp_path / "graph" / "model.onnx", exported_model["combined"] / "clips",
                    scored)
