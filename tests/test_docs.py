"""The documentation: command pages generated from the parsers (so they cannot drift), every page in the
site's navigation, every link to a record alive, and the site building in strict mode."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ticketsearch.commands import COMMANDS
from ticketsearch.commands.reference import command_reference, reference_pages

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
FLAG = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*)")


def _help(capsys, name: str) -> str:
    from ticketsearch.cli import main

    with pytest.raises(SystemExit):
        main([name, "--help"])
    return capsys.readouterr().out


@pytest.mark.parametrize("name", COMMANDS.names())
def test_each_command_page_holds_every_flag_of_its_help(name, capsys):
    """Every flag `--help` prints is in the generated page, with its help text; nothing else is made up."""
    page = command_reference(name)
    help_text = _help(capsys, name)
    # the flags argparse lists: an option line starts with the flag (a description may name other tools' flags)
    heads = re.findall(r"^\s{2}(-\S.*?)(?:\s{2,}|$)", help_text, flags=re.M)
    flags = {f for h in heads for f in FLAG.findall(h)} - {"--help"}
    usage = " ".join(help_text.split("\n\n")[0].split())  # the usage line, unwrapped
    page_usage = " ".join(page.split("```text")[1].split("```")[0].split())
    assert usage == page_usage
    rows = [ln for ln in page.splitlines() if ln.startswith("| `--")]
    listed = {f for ln in rows for f in FLAG.findall(ln.split("|")[1])}
    assert flags <= listed, sorted(flags - listed)
    assert listed <= flags | {"--help"}, sorted(listed - flags)
    assert page.startswith(f"# ticketsearch {name}\n")


def test_a_new_flag_appears_without_editing_the_docs(monkeypatch):
    """The page follows the parser: a flag added in code is on the page at the next build."""
    from ticketsearch.commands import smallest

    original = smallest.Smallest.add_args

    def add_args(self, parser):
        original(self, parser)
        parser.add_argument("--brand-new-knob", type=int, default=7, help="a knob added in code only")

    monkeypatch.setattr(smallest.Smallest, "add_args", add_args)
    page = reference_pages()["commands/smallest.md"]
    assert "| `--brand-new-knob` `BRAND_NEW_KNOB` | `7` | a knob added in code only |" in page


def test_every_page_is_in_the_navigation():
    nav = (REPO / "mkdocs.yml").read_text()
    pages = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")}
    pages |= set(reference_pages())
    missing = sorted(p for p in pages if p not in nav)
    assert missing == [], f"pages not in mkdocs.yml's nav: {missing}"


def _record_links(text: str, base: str) -> list[str]:
    return [m for m in re.findall(r"\]\(([^)#\s]+)", text) if base in m]


def test_readme_and_docs_link_only_records_that_exist():
    readme = (REPO / "README.md").read_text()
    links = _record_links(readme, "benchmarks/")
    assert links, "the README's headline table links no record"
    for link in links:
        assert (REPO / link).is_file(), link
    for page in DOCS.rglob("*.md"):
        for link in _record_links(page.read_text(), "results/"):
            target = (page.parent / link).resolve()
            rel = target.relative_to((DOCS / "results").resolve()).as_posix()
            src = REPO / "benchmarks" / "results" / ("README.md" if rel == "index.md" else rel)
            assert src.is_file(), f"{page.relative_to(REPO)} links {link}: no record {src.relative_to(REPO)}"


def test_readme_keeps_the_two_commands_first():
    head = (REPO / "README.md").read_text().splitlines()[:6]
    assert any(ln.startswith("make demo") for ln in head) and any(ln.startswith("make test") for ln in head)


@pytest.mark.slow  # `make lint` builds the site in strict mode too; this one also looks inside the pages
@pytest.mark.skipif(
    shutil.which("mkdocs", path=str(Path(sys.executable).parent)) is None, reason="mkdocs not installed"
)
def test_site_builds_in_strict_mode(tmp_path):
    mkdocs = shutil.which("mkdocs", path=str(Path(sys.executable).parent))
    r = subprocess.run(
        [mkdocs, "build", "--strict", "--quiet", "--site-dir", str(tmp_path / "site")],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    for name in COMMANDS.names():
        html = (tmp_path / "site" / "commands" / name / "index.html").read_text()
        assert f"ticketsearch {name}" in html
    assert (tmp_path / "site" / "results" / "openlth_speed" / "default" / "index.html").is_file()
