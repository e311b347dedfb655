"""MkDocs hooks: the pages that come from the code and the records rather than from docs/.

* ``commands/<name>.md`` and ``commands/index.md``: generated from the CLI's argparse parsers
  (``ticketsearch.commands.reference``) at every build, so the reference cannot drift from the code.
* ``results/...``: every committed benchmark record (``benchmarks/results/**.md`` and its figures), so a
  number on any page links the record it comes from and ``mkdocs build --strict`` fails on a dead link.
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File, Files

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def on_files(files: Files, config) -> Files:  # noqa: ANN001 - mkdocs' config object
    from ticketsearch.commands.reference import reference_pages

    for uri, text in reference_pages().items():
        files.append(File.generated(config, uri, content=text))
    for path in sorted(RESULTS.rglob("*")):
        if path.is_file() and path.suffix in (".md", ".png"):
            rel = path.relative_to(RESULTS).as_posix()
            uri = "results/index.md" if rel == "README.md" else f"results/{rel}"
            files.append(File.generated(config, uri, abs_src_path=str(path)))
    return files
