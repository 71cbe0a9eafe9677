"""The command line every stage shares: --help says what the stage reads, writes and how to run it.

The paths' defaults come from params.yaml's `paths` group and the params a stage reads from its
entry in dvc.yaml, so the help text cannot drift from what DVC runs.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from coughlab.config import Params, load_params

DVC_YAML = Path("dvc.yaml")


def declared_params(stage: str, dvc_yaml: Path = DVC_YAML) -> list[str]:
    """The params keys dvc.yaml lists for `stage` (empty when there is no dvc.yaml here)."""
    if not dvc_yaml.is_file():
        return []
    entry = yaml.safe_load(dvc_yaml.read_text())["stages"].get(stage, {})
    return [str(p) for p in entry.get("params", [])]


def stage_parser(stage: str, module: str, doc: str) -> tuple[argparse.ArgumentParser, Params]:
    """An ArgumentParser for `stage` (module `coughlab.stages.<module>`) and the params it reads."""
    params = load_params()
    declared = declared_params(stage)
    experiment = (f"for an experiment with other values, `dvc exp run -S <key>=<value>` with "
                  f"a key above (e.g. -S {declared[0]}=...): it re-runs this stage and what "
                  "follows" if declared else
                  "it reads no params: it re-runs when its inputs (the options above) change")
    epilog = (f"params read from params.yaml: {', '.join(declared) or 'none'}.\n"
              f"Run it as DVC does: `dvc repro {stage}` (the whole pipeline: `make repro`); "
              f"{experiment}.\n"
              "Path defaults come from params.yaml's `paths` (conf/paths/default.yaml), which "
              "dvc.yaml's deps and outs use too.")
    parser = argparse.ArgumentParser(prog=f"python -m coughlab.stages.{module}", description=doc,
                                     epilog=epilog,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    return parser, params


def path_option(parser: argparse.ArgumentParser, flag: str, default: str, help_text: str,
                dest: str | None = None) -> None:
    """A path option whose help shows its default (from params.yaml's paths)."""
    parser.add_argument(flag, dest=dest, type=Path, default=Path(default),
                        help=f"{help_text} (default: %(default)s)")
