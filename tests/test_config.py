import dataclasses
from pathlib import Path

import pytest
import yaml

from coughlab import config
from coughlab.config import ParamsError, compose, load_params

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
    with pytest.raises(ParamsError, match=f"{path}: trian: Key 'trian' not in"):
        load_params(path)


def test_wrong_type_is_an_error(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"train": {"epochs": "many"}}))
    with pytest.raises(ParamsError, match="train.epochs: Value 'many' of type 'str'"):
        load_params(path)


@pytest.mark.parametrize("key", ["audio.windows", "train.balance", "seed", "paths.features",
                                 "train.sagemaker.instance_type"])
def test_a_missing_key_is_an_error_naming_it_and_the_file(tmp_path, key):
    """conf/ is the only home of a value: nothing fills a gap from a default in the code."""
    params = compose(ROOT / "conf")
    *parents, leaf = key.split(".")
    node = params
    for parent in parents:
        node = node[parent]
    del node[leaf]
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    with pytest.raises(ParamsError, match=f"{path}: no value for {key}; conf/ is where"):
        load_params(path)


def test_the_config_dataclasses_hold_no_values():
    """A default here could disagree with conf/ (audio.windows was 1 here, 5 in conf/audio)."""
    classes = [c for c in vars(config).values()
               if isinstance(c, type) and dataclasses.is_dataclass(c)]
    assert len(classes) > 10
    for cls in classes:
        for field in dataclasses.fields(cls):
            assert field.default is dataclasses.MISSING, (cls.__name__, field.name)
            assert field.default_factory is dataclasses.MISSING, (cls.__name__, field.name)


def test_missing_params_file_says_where_to_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="repository root"):
        load_params(tmp_path / "params.yaml")
