"""The README and docs/ say what the code does: the config table is the generated one, every path and
`python -m` module they name exists, and each module the README runs answers --help."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest

from distrib.config import README_BEGIN, README_END, Config
from distrib.options import markdown_table
from tests.helpers import REPO, clean_env

DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
TEXT = {path.relative_to(REPO).as_posix(): path.read_text() for path in DOCUMENTS}
PATH = re.compile(r"\b(?:configs|slurm|docs|benchmarks|distrib|launch|tests)/[\w./-]*[\w]")
MODULE = re.compile(r"python -m ([a-z_][\w.]*)")


def test_readme_config_table_is_the_generated_one():
    readme = TEXT["README.md"]
    table = readme.split(README_BEGIN, 1)[1].split(README_END, 1)[0].strip()
    assert table == markdown_table(Config).strip(), "regenerate it: python -m distrib.config --update-readme"


@pytest.mark.parametrize("document", sorted(TEXT))
def test_every_path_a_document_names_exists(document):
    named = sorted(set(PATH.findall(TEXT[document])))
    missing = [p for p in named if not (REPO / p).exists()]
    assert not missing, f"{document} names {missing}"
    if document == "README.md":  # each shipped config is shown to the user
        shipped = {f"configs/{c.name}" for c in REPO.glob("configs/*.yaml")}
        assert {p for p in named if p.startswith("configs/")} <= shipped


def test_relative_links_resolve():
    for document, text in TEXT.items():
        base = (REPO / document).parent
        for target in re.findall(r"\]\(([^)#:]+)\)", text):
            assert (base / target).exists(), f"{document} links to {target}"


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
