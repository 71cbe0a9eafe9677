"""`make plots`: DVC's interactive plots as one HTML page that renders offline.

`dvc plots show` and `dvc plots diff` write a page that loads Vega, Vega-Lite and vega-embed
from a CDN at view time, so it stays blank without network. This writes an HTML template that
inlines them instead, from the pinned vl-convert-python package (no CDN, no Node), and runs
DVC with it (`--html-template`):

    python -m coughlab.plots                       # the workspace: dvc plots show
    python -m coughlab.plots main loyal-lark       # revisions or experiments: dvc plots diff

The page goes to build/plots/index.html; open it in any browser, online or not.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from coughlab.atomic import atomic_write_text

OUT = Path("build/plots")
TEMPLATE = "offline-template.html"
# DVC's templates write Vega-Lite 5 specs: the bundle's Vega-Lite is the newest 5.x it has.
VEGA_LITE = "v5.21"
# DVC's own page with its {scripts} (the CDN <script> tags) left out and the bundle inlined.
PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>coughlab plots</title>
<script>{bundle}</script>
<style>body {{ font-family: system-ui, sans-serif; }} table {{ border-spacing: 15px; }}</style>
</head>
<body>
{{plot_divs}}
</body>
</html>
"""


class PlotsError(Exception):
    """The page cannot be made; the message says why."""


def offline_template() -> str:
    """DVC's HTML template with Vega, Vega-Lite and vega-embed inlined."""
    import vl_convert  # dev extra, like the PR report's PNGs

    bundle = vl_convert.javascript_bundle(vl_version=VEGA_LITE)
    return PAGE.format(bundle=bundle.replace("</script", "<\\/script"))


def render(repo: Path, revisions: list[str], out: Path) -> Path:
    """Write `out`/index.html for the workspace (no revisions) or a diff of `revisions`."""
    template = out.parent / f"{out.name}-{TEMPLATE}"
    atomic_write_text(template, offline_template())
    command = (["plots", "diff", *revisions] if revisions else ["plots", "show"])
    result = subprocess.run([sys.executable, "-m", "dvc", *command, "--html-template",
                             str(template.resolve()), "-o", str(out.resolve())], cwd=repo,
                            capture_output=True, text=True)
    if result.returncode != 0:
        said = [line for line in result.stderr.splitlines() if line.strip()] or [""]
        raise PlotsError(f"`dvc {' '.join(command)}` failed (exit {result.returncode}): "
                         f"{said[-1].strip()}")
    return out / "index.html"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m coughlab.plots", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("revisions", nargs="*",
                        help="git revisions or experiment names to compare (none: the workspace)")
    parser.add_argument("--out", type=Path, default=OUT,
                        help="folder for index.html (default %(default)s)")
    parser.add_argument("--repo", type=Path, default=Path("."),
                        help="repository root (default: the current directory)")
    args = parser.parse_args(argv)
    out = args.out if args.out.is_absolute() else args.repo / args.out
    try:
        page = render(args.repo, args.revisions, out)
    except PlotsError as err:
        sys.exit(f"plots: {err}")
    print(f"plots: wrote {page} (renders offline)")


if __name__ == "__main__":
    main()
