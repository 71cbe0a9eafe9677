import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from coughlab.export import ServingModel, onnx_predict, onnx_session
from coughlab.config import QualityConfig
from coughlab.model import load_model
from coughlab.provenance import provenance
from coughlab.stages.export_lambda import export_lambda

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("batch,samples", [(1, 1), (1, 800), (2, 48000), (3, 48001), (1, 160000)])
def test_onnx_matches_pytorch(exported_model, batch, samples):
    """The ONNX graph (featurizer inside) gives PyTorch's probabilities at any length."""
    net, audio = load_model(exported_model["model_pt"])
    wave = (np.random.default_rng(samples).standard_normal((batch, samples)) * 0.1).astype(np.float32)
    with torch.inference_mode():
        expected = ServingModel(net, audio)(torch.from_numpy(wave)).numpy()
    got = onnx_predict(onnx_session(exported_model["lambda_dir"] / "model.onnx"), wave)
    assert got.shape == (batch,)
    assert np.abs(got - expected).max() <= 1e-4


def test_model_json_records_parity_threshold_rate_and_rules(exported_model):
    meta = json.loads((exported_model["lambda_dir"] / "model.json").read_text())
    assert meta["sample_rate"] == 16000 and meta["threshold"] == 0.5
    assert meta["parity"]["clips"] == 3
    assert meta["parity"]["max_abs_diff"] <= meta["parity"]["tolerance"] == 1e-4
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

    from coughlab.config import AudioConfig
    from coughlab.stages.featurize import featurize

    combined = tmp_path / "combined"
    shutil.copytree(exported_model["combined"], combined)
    for clip in (combined / "clips").iterdir():
        wave, sr = sf.read(clip, dtype="float32")
        sf.write(clip, np.round(wave * 32) / 32, sr, subtype="FLOAT")
    featurize(combined, tmp_path / "features", AudioConfig())
    with pytest.raises(RuntimeError, match="disagree"):
        export_lambda(exported_model["model_pt"].parent, exported_model["metrics"], combined,
                      tmp_path / "features", exported_model["fetched"],
                      ROOT / "lambda" / "handler.py", QualityConfig(), tmp_path / "lambda",
                      exported_model["data_dir"], exported_model["params_file"],
                      tmp_path / "model-record.json")
    assert not (tmp_path / "lambda").exists() and not (tmp_path / "model-record.json").exists()


def test_onnx_graph_needs_no_torch_ops(exported_model):
    import onnx

    graph = onnx.load(exported_model["lambda_dir"] / "model.onnx").graph
    domains = {node.domain for node in graph.node}
    assert domains <= {"", "ai.onnx"}, domains
    assert [i.name for i in graph.input] == ["waveform"]
    assert [o.name for o in graph.output] == ["p_positive"]


def test_export_is_byte_identical_across_processes(exported_model, tmp_path):
    """So DVC sees the same model.onnx hash for the same model.pt, run after run."""
    script = ("import sys; from pathlib import Path; from coughlab.model import load_model; "
              "from coughlab.export import export_onnx; net, audio = load_model(Path(sys.argv[1])); "
              "export_onnx(net, audio, Path(sys.argv[2]))")
    for name in ("a.onnx", "b.onnx"):
        subprocess.run([sys.executable, "-c", script, str(exported_model["model_pt"]),
                        str(tmp_path / name)], check=True, capture_output=True)
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()


# --- provenance: what the model was derived from, as DVC hashes it -------------------------

def dvc(repo, *args):
    subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, check=True, capture_output=True)


def test_provenance_equals_what_dvc_records(exported_model, tmp_path):
    """data.dvc's md5, dvc.lock's hashes of features and model and its train params, from real DVC."""
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
    names = ("model", "metrics", "combined", "data_dir", "params_file", "features", "fetched")
    sources = {name: exported_model["model_pt"].parent if name == "model" else exported_model[name]
               for name in names}
    for name, source in sources.items():
        (shutil.copytree if source.is_dir() else shutil.copy)(source, tmp_path / source.name)
    Path("README.md").write_text("a change that has nothing to do with the model\n")
    subprocess.run(["git", "add", "-A"], check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@e", "commit", "-qm", "x"], check=True)
    local = {name: Path(source.name) for name, source in sources.items()}
    export_lambda(local["model"], local["metrics"], local["combined"], local["features"],
                  local["fetched"], ROOT / "lambda" / "handler.py", QualityConfig(), Path("lambda"),
                  local["data_dir"], local["params_file"], Path("reports/model.json"))
    for name in ("model.json", "model.onnx"):
        assert (Path("lambda") / name).read_bytes() == (exported_model["lambda_dir"] / name).read_bytes()
    assert Path("reports/model.json").read_bytes() == exported_model["record"].read_bytes()


def test_missing_provenance_input_fails_before_writing(exported_model, tmp_path):
    with pytest.raises(FileNotFoundError, match="cannot record its DVC hash"):
        export_lambda(exported_model["model_pt"].parent, exported_model["metrics"],
                      exported_model["combined"], exported_model["features"],
                      exported_model["fetched"], ROOT / "lambda" / "handler.py", QualityConfig(),
                      tmp_path / "lambda", tmp_path / "no-data", exported_model["params_file"],
                      tmp_path / "model-record.json")
    assert list(tmp_path.iterdir()) == []
