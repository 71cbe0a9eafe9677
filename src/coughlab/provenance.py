"""What a model was derived from, in the hashes dvc.lock uses, and the git-tracked record of it.

export-lambda writes `provenance(...)` into build/lambda/model.json, which ships with the
model, and `{version, provenance}` into reports/model.json, which is committed in git
(`cache: false`), so `python -m coughlab.trace <model_version>` finds the commit that
produced a live model from any clone. Everything here is a function of the stage's declared
inputs only (no paths, times or git state): an unrelated change never changes model.json,
so DVC's cache and bit-identical reruns hold.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import yaml

from coughlab.atomic import atomic_write_text
from coughlab.config import TrainingParams
from coughlab.digest import file_hexdigest

RECORD = Path("reports/model.json")
# What training read (train's params in dvc.lock, and audio, which featurize read and which
# model.pt carries): the sections of TrainingParams, which a SageMaker job receives too.
TRAIN_PARAMS = tuple(field.name for field in dataclasses.fields(TrainingParams))


def dvc_md5(path: Path | str) -> str:
    """The md5 DVC 3 (`hash: md5`) records for a file, or `<md5>.dir` for a directory.

    A directory's md5 is that of the JSON list of {"md5", "relpath"} of its files sorted by
    relpath, as dvc-data's Tree.digest computes it.
    """
    path = Path(path)
    if not path.is_dir():
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: cannot record its DVC hash")
        return file_hexdigest(path, "md5")
    entries = sorted(({"md5": file_hexdigest(p, "md5"),
                       "relpath": p.relative_to(path).as_posix()}
                      for p in path.rglob("*") if p.is_file()), key=lambda e: e["relpath"])
    return hashlib.md5(json.dumps(entries, sort_keys=True).encode()).hexdigest() + ".dir"


def read_params(params_file: Path) -> dict:
    params = yaml.safe_load(params_file.read_text()) or {}
    missing = [key for key in (*TRAIN_PARAMS, "data") if key not in params]
    if missing:
        raise KeyError(f"{params_file} has no {', '.join(missing)}: run `make params`")
    return params


def provenance(data_dir: Path, params_file: Path, features: Path, model_dir: Path) -> dict:
    """What a model was derived from: data, params, features and model, as DVC hashes them.

    `data_md5` is data/'s hash as `dvc add` writes it into data.dvc (`data_sources` says
    which sources fetch read); `params` are train's params as dvc.lock records them;
    `features_md5` and `model_md5` are dvc.lock's hashes of build/features and build/model.
    """
    params = read_params(params_file)
    return {"data_md5": dvc_md5(data_dir),
            "data_sources": params["data"]["sources"],
            "params": {key: params[key] for key in TRAIN_PARAMS},
            "features_md5": dvc_md5(features),
            "model_md5": dvc_md5(model_dir)}


def record(version: str, derived_from: dict) -> dict:
    """The git-tracked entry for one model: its version and what it was derived from."""
    return {"version": version, "provenance": derived_from}


def write_record(path: Path, version: str, derived_from: dict) -> None:
    atomic_write_text(path, json.dumps(record(version, derived_from), indent=2) + "\n")
