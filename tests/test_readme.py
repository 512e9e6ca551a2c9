"""The README and docs/ say what the code does: docs/config.md's table is the generated one and the README
links to it, every path, link and `python -m` module they name exists, and each module the README runs
answers --help."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest

from distrib import config
from distrib.config import TABLE_BEGIN, TABLE_END, Config
from distrib.options import markdown_table
from tests.helpers import REPO, clean_env

DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
TEXT = {path.relative_to(REPO).as_posix(): path.read_text() for path in DOCUMENTS}
PATH = re.compile(r"\b(?:configs|slurm|docs|benchmarks|distrib|launch|tests)/[\w./-]*[\w]")
MODULE = re.compile(r"python -m ([a-z_][\w.]*)")
LINK = re.compile(r"\]\(([^)\s:]+)\)")  # a relative link, with or without an #anchor


def table_of(document: str) -> str:
    return document.split(TABLE_BEGIN, 1)[1].split(TABLE_END, 1)[0].strip()


def test_the_config_table_is_the_generated_one():
    table = table_of(TEXT["docs/config.md"])
    assert table == markdown_table(Config).strip(), "regenerate it: python -m distrib.config --update-docs"


def test_the_readme_links_to_the_config_table_instead_of_holding_it():
    assert "](docs/config.md)" in TEXT["README.md"]
    assert TABLE_BEGIN not in TEXT["README.md"] and "| `slurm.folder` |" not in TEXT["README.md"]


@pytest.mark.parametrize("flag", ["--update-docs", "--update-readme"])
def test_update_docs_rewrites_a_stale_table_in_docs_config(flag, tmp_path, monkeypatch, capsys):
    """--update-readme, the flag's older name, still works and writes docs/config.md too."""
    stale = TEXT["docs/config.md"].replace("| `slurm.folder` |", "| `slurm.old_folder` |")
    (tmp_path / "config.md").write_text(stale)
    monkeypatch.setattr(config, "CONFIG_DOC", tmp_path / "config.md")
    assert config.main([flag]) == 0
    written = (tmp_path / "config.md").read_text()
    assert table_of(written) == markdown_table(Config).strip()
    assert written.split(TABLE_BEGIN)[0] == stale.split(TABLE_BEGIN)[0]  # the prose around it as it was
    assert written.split(TABLE_END)[1] == stale.split(TABLE_END)[1]
    assert config.main([flag]) == 0
    assert capsys.readouterr().out.splitlines() == [f"{tmp_path / 'config.md'}: updated",
                                                    f"{tmp_path / 'config.md'}: already up to date"]


def test_update_docs_on_a_file_without_the_markers_is_one_line(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text(TEXT["README.md"])
    with pytest.raises(SystemExit) as stop:
        config.main(["--update-readme", str(readme)])
    assert stop.value.code == 2 and readme.read_text() == TEXT["README.md"]
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no <!-- config-table:begin -->" in err and "docs/config.md" in err


@pytest.mark.parametrize("document", sorted(TEXT))
def test_every_path_a_document_names_exists(document):
    named = sorted(set(PATH.findall(TEXT[document])))
    missing = [p for p in named if not (REPO / p).exists()]
    assert not missing, f"{document} names {missing}"
    if document == "README.md":  # each shipped config is shown to the user
        shipped = {f"configs/{c.name}" for c in REPO.glob("configs/*.yaml")}
        assert {p for p in named if p.startswith("configs/")} <= shipped


def heading_anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives a document's headings: lower case, punctuation dropped, spaces to hyphens."""
    prose = re.sub(r"^```.*?^```", "", markdown, flags=re.M | re.S)  # a `# comment` in a code block is no heading
    return {re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
            for heading in re.findall(r"^#+ (.+)$", prose, re.M)}


def test_relative_links_resolve():
    """Every relative link's file exists, and so does the heading its #anchor names."""
    for document, text in TEXT.items():
        for link in LINK.findall(text):
            target, _, anchor = link.partition("#")
            path = (REPO / document).parent / target if target else REPO / document
            assert path.exists(), f"{document} links to {target}"
            if anchor and path.suffix == ".md":
                assert anchor in heading_anchors(path.read_text()), f"{document} links to {link}: no such heading"


MODULES = sorted(set(MODULE.findall(TEXT["README.md"])) - {"pytest"})


def test_every_module_the_docs_run_is_in_the_repository():
    for document, text in TEXT.items():
        for module in set(MODULE.findall(text)) - {"pytest"}:
            path = REPO / module.replace(".", "/")
            assert path.with_suffix(".py").is_file() or (path / "__main__.py").is_file(), f"{document}: {module}"


@pytest.mark.slow
@pytest.mark.parametrize("module", MODULES)
def test_every_module_the_readme_runs_answers_help(module):
    proc = subprocess.run([sys.executable, "-m", module, "--help"], cwd=REPO, env=clean_env(), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, f"python -m {module} --help: exit {proc.returncode}\n{proc.stderr[-2000:]}"
    assert proc.stdout.strip()
