"""Keep conf/ and params.yaml one: promote an experiment's params into conf/, or say what
recomposing params.yaml from conf/ reverts.

conf/ is the only home of every value and params.yaml its composition (tests/test_config.py
fails when they differ). `dvc exp run -S lr=1e-3` and `dvc exp apply` change params.yaml only,
so after either, one of the two must give way:

    python -m coughlab.promote               # params.yaml wins: its values written into conf/
    python -m coughlab.promote --recompose   # conf/ wins (`make params`): each reverted value named

Promoting picks, for each config group of conf/config.yaml's defaults (model, train, ...),
the option whose file gives params.yaml's values (so `-S model=resnet18` becomes
`model: resnet18` there), then writes each value still different into the file that sets it
(`lr` into conf/config.yaml, `train.epochs` into conf/train/local.yaml), keeping the files'
comments, and checks that conf/ now composes to params.yaml exactly.
"""
from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import yaml
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedSeq

from coughlab.atomic import atomic_write_text
from coughlab.config import CONF_DIR, PARAMS_FILE, compose

ROOT_CONFIG = "config.yaml"


class PromoteError(Exception):
    """conf/ cannot be made to compose to params.yaml; the message says which keys."""


def leaves(tree, prefix: str = "") -> dict:
    """{dotted key: value} of a params tree; lists are values."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    out = {}
    for key, value in tree.items():
        out.update(leaves(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def differences(old: dict, new: dict) -> dict[str, tuple]:
    """{dotted key: (old value, new value)} where the two trees differ."""
    before, after = leaves(old), leaves(new)
    return {key: (before.get(key), after.get(key)) for key in sorted(before.keys() | after.keys())
            if before.get(key) != after.get(key)}


def round_trip() -> YAML:
    rt = YAML()
    rt.preserve_quotes = True
    rt.width = 100
    rt.indent(mapping=2, sequence=4, offset=2)  # conf/'s style: "  - item"
    rt.representer.add_representer(  # `null`, as conf/ writes it, not an empty value
        type(None), lambda rep, _: rep.represent_scalar("tag:yaml.org,2002:null", "null"))
    return rt


def read(path: Path):
    return round_trip().load(path.read_text())


def write(path: Path, data) -> None:
    buffer = io.StringIO()
    round_trip().dump(data, buffer)
    atomic_write_text(path, buffer.getvalue())


def choices(conf: Path) -> dict[str, str]:
    """config.yaml's defaults list: group -> chosen option."""
    return {key: value for entry in read(conf / ROOT_CONFIG)["defaults"] if isinstance(entry, dict)
            for key, value in entry.items()}


def package_of(path: Path, group: str) -> str:
    """Where a group file's keys land: `# @package X` in its header, else the group's name."""
    for line in path.read_text().splitlines():
        if line.startswith("# @package "):
            return line.split()[-1]
        if line and not line.startswith("#"):
            break
    return group


def group_files(conf: Path, group: str, option: str) -> list[tuple[Path, str]]:
    """An option's file after the files its own defaults list pulls in from its group."""
    path = conf / group / f"{option}.yaml"
    inherited = [entry for entry in (read(path) or {}).get("defaults", [])
                 if isinstance(entry, str) and entry != "_self_"]
    return [pair for base in inherited for pair in group_files(conf, group, base)] + [
        (path, package_of(path, group))]


def composition(conf: Path) -> list[tuple[Path, str]]:
    """(file, package) in the order Hydra composes them: a later file's value wins."""
    files = []
    for entry in read(conf / ROOT_CONFIG)["defaults"]:
        if entry == "_self_":
            files.append((conf / ROOT_CONFIG, ""))
        elif isinstance(entry, dict):
            (group, option), = entry.items()
            files += group_files(conf, group, option)
    return files


def key_in(data, path: list[str]) -> bool:
    for step in path:
        if not isinstance(data, dict) or step not in data:
            return False
        data = data[step]
    return True


def home_of(conf: Path, key: str) -> tuple[Path, list[str]]:
    """The file whose value of `key` wins, and the key's path inside it."""
    parts = key.split(".")
    candidates = []
    for path, package in composition(conf):
        prefix = package.split(".") if package else []
        if parts[:len(prefix)] == prefix:
            candidates.append((path, parts[len(prefix):]))
    for path, inner in reversed(candidates):
        if key_in(read(path), inner):
            return path, inner
    if not candidates:
        raise PromoteError(f"no file in {conf} can hold {key}")
    return candidates[-1]


def set_value(path: Path, inner: list[str], value) -> None:
    data = read(path)
    node = data
    for step in inner[:-1]:
        node = node.setdefault(step, {})
    if isinstance(value, list):  # `[local, virufy]`, as conf/ writes lists
        value = CommentedSeq(value)
        value.fa.set_flow_style()
    node[inner[-1]] = value
    write(path, data)


def pick_groups(conf: Path, target: dict) -> list[str]:
    """Switch each group of config.yaml to the option closest to `target`; what changed."""
    changed = []
    chosen = choices(conf)
    for group, current in chosen.items():
        def distance(option: str) -> int:
            overrides = [f"{g}={option if g == group else o}" for g, o in chosen.items()]
            return len(differences(compose(conf, overrides), target))

        options = sorted(p.stem for p in (conf / group).glob("*.yaml"))
        best = min(options, key=lambda option: (distance(option), option != current))
        if best != current:
            root = read(conf / ROOT_CONFIG)
            for entry in root["defaults"]:
                if isinstance(entry, dict) and group in entry:
                    entry[group] = best
            write(conf / ROOT_CONFIG, root)
            chosen[group] = best
            changed.append(f"{conf / ROOT_CONFIG}: defaults {group}: {current} -> {best}")
    return changed


def promote(conf: Path, params_file: Path) -> list[str]:
    """Write params.yaml's values into conf/; the changes, one line each."""
    target = yaml.safe_load(params_file.read_text())
    changed = pick_groups(conf, target)
    for key, (_, value) in differences(compose(conf), target).items():
        path, inner = home_of(conf, key)
        before = leaves(compose(conf)).get(key)
        set_value(path, inner, value)
        changed.append(f"{path}: {key}: {before!r} -> {value!r}")
    left = differences(compose(conf), target)
    if left:
        raise PromoteError(f"conf/ still differs from {params_file} in {', '.join(left)}")
    return changed


def recompose(conf: Path, params_file: Path) -> list[str]:
    """Rewrite params.yaml from conf/ (what `make params` does); each value it reverts."""
    from omegaconf import OmegaConf

    fresh = compose(conf)
    old = yaml.safe_load(params_file.read_text()) if params_file.is_file() else {}
    reverted = [f"{params_file}: {key}: {before!r} -> {after!r} (conf/'s value)"
                for key, (before, after) in differences(old or {}, fresh).items()]
    atomic_write_text(params_file, OmegaConf.to_yaml(fresh))
    return reverted


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m coughlab.promote", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recompose", action="store_true",
                        help="conf/ wins: rewrite params.yaml from it, naming each value reverted")
    parser.add_argument("--conf-dir", type=Path, default=CONF_DIR)
    parser.add_argument("--params", type=Path, default=PARAMS_FILE)
    args = parser.parse_args(argv)
    try:
        if args.recompose:
            lines = recompose(args.conf_dir, args.params)
            done = (f"wrote {args.params} from {args.conf_dir}/"
                    + (f": {len(lines)} value(s) reverted; to keep them instead, run "
                       "`python -m coughlab.promote` before `make params`" if lines else
                       ": nothing changed"))
        else:
            lines = promote(args.conf_dir, args.params)
            done = (f"{args.conf_dir}/ now composes to {args.params}"
                    + ("; commit both" if lines else ": nothing to promote"))
    except (PromoteError, OSError, yaml.YAMLError) as err:
        sys.exit(f"promote: {err}")
    print("\n".join([*lines, done]))


if __name__ == "__main__":
    main()
