from pathlib import Path

import pytest
import yaml
from omegaconf.errors import ConfigKeyError, ValidationError

from coughlab.config import compose, load_params

ROOT = Path(__file__).resolve().parents[1]


def test_committed_params_yaml_is_the_composition_of_conf():
    committed = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert committed == compose(ROOT / "conf"), "params.yaml is stale: run `make params`"


def test_top_level_lr_override_as_dvc_exp_run_passes_it():
    params = compose(ROOT / "conf", ["lr=1e-3"])
    assert params["lr"] == pytest.approx(1e-3)


def test_group_switch_changes_the_model():
    assert compose(ROOT / "conf", ["model=resnet18"])["model"]["arch"] == "resnet18"


def test_load_params_is_typed(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(compose(ROOT / "conf", ["train.epochs=3"])))
    params = load_params(path)
    assert params.train.epochs == 3 and params.audio.sample_rate == 16000


def test_misspelt_key_is_an_error(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"trian": {"epochs": 3}}))
    with pytest.raises(ConfigKeyError, match="trian"):
        load_params(path)


def test_wrong_type_is_an_error(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"train": {"epochs": "many"}}))
    with pytest.raises(ValidationError):
        load_params(path)


def test_missing_params_file_says_where_to_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="repository root"):
        load_params(tmp_path / "params.yaml")
