"""Docs that run: the fenced code blocks of a markdown page, and the notebook made from a tutorial.

A page's ``bash`` and ``python`` blocks are its examples; a block that cannot run on a CPU-only,
offline CI machine (a GPU, a download, a server that runs until stopped) carries, on the line
right above its fence, ``<!-- docs-test: skip (the reason) -->``. Every other block runs in
tests/test_docs.py: README.md and the getting-started and how-to pages block by block, each
tutorial as its notebook ``examples/<name>.ipynb``, written from the tutorial by :func:`notebook`
(``python docs/hooks/notebooks.py`` rewrites them all; a test fails when one is stale).
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
#: The tutorials and their notebooks, in the order of the site's navigation.
TUTORIALS = ("finetune", "features", "active-learning", "audit", "export")
RUNNABLE = ("bash", "python")

_FENCE = re.compile(r"^(?P<indent>[ ]*)```(?P<lang>[\w+-]*)[^\n]*\n(?P<body>.*?)^(?P=indent)```[ \t]*$", re.M | re.S)
_SKIP = re.compile(r"<!--\s*docs-test:\s*skip\s*\((?P<reason>[^()]*(?:\([^()]*\)[^()]*)*)\)\s*-->[ \t]*$")


@dataclass(frozen=True)
class Block:
    """One fenced code block of a page.

    Attributes:
        lang: the fence's language (``bash``, ``python``, ``text``, ...).
        code: the block's text, its indentation removed.
        line: its first line in the page (1-based), for messages.
        skip: the reason given in a skip marker, or None when the block runs.
        start, end: the block's span in the page's text (fence lines included).
    """

    lang: str
    code: str
    line: int
    skip: str | None
    start: int
    end: int

    @property
    def runs(self) -> bool:
        return self.lang in RUNNABLE and self.skip is None


def blocks(text: str) -> list[Block]:
    """Every fenced block of a markdown text, in order."""
    out = []
    for m in _FENCE.finditer(text):
        indent = len(m["indent"])
        code = "\n".join(line[indent:] for line in m["body"].splitlines())
        before = text[:m.start()].rstrip("\n").rsplit("\n", 1)[-1].strip()
        marker = _SKIP.search(before)
        out.append(Block(m["lang"], code + "\n", text.count("\n", 0, m.start()) + 1,
                         marker["reason"].strip() if marker else None, m.start(), m.end()))
    return out


def notebook(markdown: str, title: str):
    """An ``nbformat`` v4 notebook of a tutorial: its prose as markdown cells, its blocks as code cells.

    ``bash`` blocks become ``%%bash`` cells; blocks with a skip marker stay in the markdown (shown,
    not run).
    """
    import nbformat

    cells, prose_from = [], 0
    header = (f"*This notebook is made from the tutorial `docs/tutorials/{title}.md` "
              "(`python docs/hooks/notebooks.py`); edit the tutorial, not the notebook.*")
    cells.append(nbformat.v4.new_markdown_cell(header))

    def prose(upto: int) -> None:
        text = re.sub(r"<!--\s*docs-test:[^>]*-->\n?", "", markdown[prose_from:upto]).strip()
        if text:
            cells.append(nbformat.v4.new_markdown_cell(text))

    for b in blocks(markdown):
        if not b.runs:
            continue
        prose(b.start)
        code = b.code.rstrip("\n")
        cells.append(nbformat.v4.new_code_cell("%%bash\nset -euo pipefail\n" + code if b.lang == "bash" else code))
        prose_from = b.end
    prose(len(markdown))
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    for i, cell in enumerate(nb.cells):  # stable ids: a regenerated notebook is byte-identical
        cell["id"] = f"{title}-{i}"
    return nb


def notebook_text(name: str) -> str:
    """The notebook of ``docs/tutorials/<name>.md`` as the text ``examples/<name>.ipynb`` must hold."""
    import nbformat

    md = (REPO / "docs" / "tutorials" / f"{name}.md").read_text(encoding="utf-8")
    return nbformat.writes(notebook(md, name)) + "\n"


def main() -> None:
    for name in TUTORIALS:
        path = REPO / "examples" / f"{name}.ipynb"
        path.write_text(notebook_text(name), encoding="utf-8")
        print(f"wrote {path.relative_to(REPO)}", file=sys.stderr)


if __name__ == "__main__":
    main()
