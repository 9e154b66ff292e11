"""Docs that run: README's and the docs pages' code blocks, the tutorials' notebooks, the CLI reference.

Each page runs in a temporary folder of its own, offline (``TLKIT_OFFLINE=1``), block after block:
``bash`` blocks in a shell there (``tlkit`` on the PATH), ``python`` blocks in one namespace per
page, as a reader would type them. Tutorials run as their notebooks (``examples/*.ipynb``, made from
the tutorial by docs/hooks/notebooks.py) with nbclient. Blocks that cannot run here carry a skip
marker with the reason (see docs/hooks/notebooks.py); those are checked to have one.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"docs_{name}", REPO / "docs" / "hooks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


nb = _load("notebooks")
clidoc = _load("cli_reference")

#: Pages run block by block (tutorials run as notebooks, below).
PAGES = ["README.md", "docs/getting-started.md", *sorted(
    str(p.relative_to(REPO)) for p in (REPO / "docs" / "how-to").glob("*.md"))]
TUTORIAL_PAGES = [f"docs/tutorials/{name}.md" for name in nb.TUTORIALS]


def _env() -> dict[str, str]:
    bindir = str(Path(sys.executable).parent)
    return {**os.environ, "TLKIT_OFFLINE": "1", "PATH": bindir + os.pathsep + os.environ.get("PATH", ""),
            "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), "COLUMNS": "100"}


def run_page(page: str, workdir: Path, monkeypatch) -> int:
    """Run every runnable block of ``page`` in ``workdir``; returns how many ran."""
    text = (REPO / page).read_text(encoding="utf-8")
    monkeypatch.chdir(workdir)
    for key, value in _env().items():
        monkeypatch.setenv(key, value)
    namespace: dict = {"__name__": "__main__"}
    ran = 0
    for block in nb.blocks(text):
        if not block.runs:
            continue
        where = f"{page} line {block.line}"
        if block.lang == "bash":
            proc = subprocess.run(["bash", "-euo", "pipefail", "-c", block.code], cwd=workdir, env=_env(),
                                  capture_output=True, text=True, timeout=600)
            assert proc.returncode == 0, f"{where} failed:\n{block.code}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
        else:
            try:
                exec(compile(block.code, where, "exec"), namespace)
            except BaseException as e:  # SystemExit included: a block must not end the reader's session
                raise AssertionError(f"{where} failed: {type(e).__name__}: {e}\n{block.code}") from e
        ran += 1
    return ran


@pytest.mark.parametrize("page", PAGES + TUTORIAL_PAGES)
def test_blocks_that_do_not_run_say_why(page):
    found = nb.blocks((REPO / page).read_text(encoding="utf-8"))
    assert any(b.runs for b in found), f"{page} has no runnable example"
    for b in found:
        if b.lang in nb.RUNNABLE and b.skip is not None:
            assert len(b.skip) >= 10, f"{page} line {b.line}: a skip marker needs a reason"


def test_markers_are_read():
    text = "a\n<!-- docs-test: skip (needs a GPU (CUDA)) -->\n```bash\nnvidia-smi\n```\n\n```python\nx = 1\n```\n"
    first, second = nb.blocks(text)
    assert (first.lang, first.skip, first.runs) == ("bash", "needs a GPU (CUDA)", False)
    assert (second.lang, second.skip, second.runs, second.code) == ("python", None, True, "x = 1\n")


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES)
def test_page_runs(page, tmp_path, monkeypatch):
    assert run_page(page, tmp_path, monkeypatch) > 0


@pytest.mark.parametrize("name", nb.TUTORIALS)
def test_notebook_is_made_from_its_tutorial(name):
    path = REPO / "examples" / f"{name}.ipynb"
    assert path.read_text(encoding="utf-8") == nb.notebook_text(name), (
        f"{path.name} is stale: run `python docs/hooks/notebooks.py`")


@pytest.mark.slow
@pytest.mark.parametrize("name", nb.TUTORIALS)
def test_tutorial_notebook_runs(name, tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    for key, value in _env().items():
        monkeypatch.setenv(key, value)  # the kernel inherits them
    notebook = nbformat.read(REPO / "examples" / f"{name}.ipynb", as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    errors = [o for c in notebook.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors


def test_cli_reference_lists_every_command_and_option():
    import typer

    from tlkit.cli import app

    text = clidoc.cli_reference()
    group = typer.main.get_command(app)
    ctx = typer.Context(group, info_name="tlkit")
    names = group.list_commands(ctx)
    assert len(names) >= 19
    for name in names:
        command = group.get_command(ctx, name)
        assert f"## `tlkit {name}`" in text
        section = text.split(f"## `tlkit {name}`", 1)[1].split("\n## ", 1)[0]
        for param in command.params:
            if param.name == "help":
                continue
            if param.param_type_name == "argument":
                assert param.name.upper() in section, (name, param.name)
            else:
                for opt in [*param.opts, *param.secondary_opts]:
                    assert opt in section, (name, opt)
            if param.help:
                assert clidoc._cell(param.help) in section, (name, param.name)


def test_cli_reference_page_holds_the_marker():
    assert clidoc.MARKER in (REPO / "docs" / "reference" / "cli.md").read_text(encoding="utf-8")
