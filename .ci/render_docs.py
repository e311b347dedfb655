"""Render every page of the documentation site in headless Chromium and check it drew (issue 21).

Run by hand where Chromium is installed (not in CI: the CI machine has no browser)::

    .venv/bin/python .ci/render_docs.py [--out DIR] [--chromium /usr/bin/chromium]

It builds the site with ``mkdocs build --strict``, opens each page's ``index.html`` from disk, saves a
screenshot, and fails when a page is blank (almost one colour), lacks the Material theme's article, or
shows mkdocs's 404 page. Why a browser and not only the strict build: a page can build cleanly and still
render nothing (a broken template, a table swallowed by bad markup, a theme asset that does not load).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="", help="where the screenshots go (default: a temporary folder)")
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    args = ap.parse_args(argv)
    from PIL import Image, ImageStat

    out = Path(args.out or tempfile.mkdtemp(prefix="docs-render-"))
    out.mkdir(parents=True, exist_ok=True)
    site = Path(tempfile.mkdtemp(prefix="docs-site-"))
    subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "-d", str(site)],
        cwd=REPO,
        check=True,
    )
    pages = sorted(p for p in site.rglob("index.html") if "assets" not in p.parts)
    bad = []
    with tempfile.TemporaryDirectory() as profile:
        for page in pages:
            rel = page.parent.relative_to(site).as_posix()
            rel = "home" if rel in ("", ".") else rel
            png = out / (rel.replace("/", "__") + ".png")
            common = [args.chromium, *FLAGS, f"--user-data-dir={profile}"]
            subprocess.run(
                [*common, f"--screenshot={png}", "--window-size=1280,1600", page.as_uri()],
                check=True,
                capture_output=True,
                timeout=120,
            )
            dom = subprocess.run(
                [*common, "--dump-dom", page.as_uri()],
                check=True,
                capture_output=True,
                text=True,
                timeout=120,
            ).stdout
            spread = max(ImageStat.Stat(Image.open(png).convert("L")).stddev)
            why = []
            if spread < 8:
                why.append(f"blank (pixel spread {spread:.1f})")
            if "md-content__inner" not in dom:
                why.append("no Material article")
            if "<h1" not in dom:
                why.append("no heading")
            if "404 - Not found" in dom:
                why.append("404 page")
            print(f"{'ok ' if not why else 'BAD'} {rel:50s} spread {spread:5.1f}  {png.name}", flush=True)
            if why:
                bad.append(f"{rel}: {', '.join(why)}")
    print(f"{len(pages) - len(bad)} of {len(pages)} pages rendered; screenshots in {out}")
    for b in bad:
        print("BAD", b)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
