"""`recsys plots` (`make plots`): `dvc plots show` as a page that renders offline. DVC's own page loads Vega from a
CDN, so without a network it is blank; this writes an HTML template with Vega, Vega-Lite and Vega-Embed inline (the
bundle of the Vega team's `vl-convert`), points the repository's local DVC config at it (`plots.html_template`, in
.dvc/config.local), and renders the plots of dvc.yaml: validation NDCG@10 and Recall@10 per epoch of the retriever
and the reranker on one chart each, and the retriever's training loss. Plain `dvc plots show` is offline after it."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from recsys_core.config import Config
from recsys_core.errors import RecsysError
from recsys_core.io import atomic_path
from stages.common import paths, run_stage

TEMPLATE = Path(".dvc") / "tmp" / "plots-offline.html"  # .dvc/tmp is git-ignored; remade when missing
PAGE = """<!DOCTYPE html>
<html>
<head>
<meta charset="utf-8">
{refresh_tag}
<title>DVC plots</title>
<script>/* Vega VEGA_VERSION, Vega-Embed EMBED_VERSION: inline, so the page needs no network */
SCRIPT</script>
</head>
<body>
{plot_divs}
</body>
</html>
"""


def write_template(path: Path) -> None:
    import vl_convert

    script = vl_convert.javascript_bundle().replace("</script", "<\\/script")
    page = (PAGE.replace("VEGA_VERSION", vl_convert.get_vega_version())
            .replace("EMBED_VERSION", vl_convert.get_vega_embed_version()).replace("SCRIPT", script))  # fmt: skip
    with atomic_path(path) as tmp:
        tmp.write_text(page, encoding="utf-8")


def dvc(root: Path, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=root, capture_output=True, text=True)
    if done.returncode:
        raise RecsysError(f"`dvc {' '.join(args)}` failed in {root}:\n{(done.stdout + done.stderr).strip()[-2000:]}")
    return done.stdout


def body(cfg: Config, args: argparse.Namespace) -> None:
    root = paths().root
    template = root / TEMPLATE
    if args.refresh or not template.exists():
        write_template(template)
    # relative to .dvc/, where DVC reads it from
    dvc(root, "config", "--local", "plots.html_template", str(TEMPLATE.relative_to(".dvc")))
    out = dvc(root, "plots", "show", "-o", args.out).strip().splitlines()
    print(f"{out[-1] if out else args.out} (renders offline; `dvc plots show` now uses the same template)")


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="dvc_plots", help="folder of the page (default dvc_plots/)")
    parser.add_argument("--refresh", action="store_true", help="write the template again")


def main(argv: list[str] | None = None) -> int:
    return run_stage("recsys plots", __doc__, body, argv, add_args)


if __name__ == "__main__":
    sys.exit(main())
