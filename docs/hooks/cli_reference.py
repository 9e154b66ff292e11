"""MkDocs hook: the CLI reference, generated from the typer app at build time (it cannot drift).

``docs/reference/cli.md`` holds the marker ``<!-- tlkit-cli-reference -->``; :func:`on_page_markdown`
replaces it with :func:`cli_reference`, which walks the click command tree that typer builds and
writes every command, argument and option with its help, type and default. tests/test_docs.py
checks that every command and option of the app is in it.
"""

from __future__ import annotations

import html
from typing import Any

MARKER = "<!-- tlkit-cli-reference -->"


def _cell(text: Any) -> str:
    """Text for one markdown table cell: one line, pipes escaped, HTML-safe."""
    return html.escape(" ".join(str(text).split())).replace("|", "\\|")


def _argument_name(param) -> str:
    name = param.name.upper() + ("..." if param.nargs == -1 else "")
    return name if param.required else f"[{name}]"


def command_rows(command, ctx) -> list[tuple[str, str]]:
    """``(option or argument as help shows it, description)`` per parameter of one command, in help order.

    Uses each parameter's own help record (what ``tlkit CMD --help`` prints, defaults and
    ``[required]`` included), so the reference says exactly what the terminal says.
    """
    rows = []
    for param in command.get_params(ctx):
        if param.name == "help" or getattr(param, "hidden", False):
            continue
        record = param.get_help_record(ctx)
        first, text = (record if record else (param.name, ""))
        if param.param_type_name == "argument":
            first = _argument_name(param) + " " + first.split(" ", 1)[-1] if " " in first else _argument_name(param)
        rows.append((first, text or ""))
    return rows


def commands():
    """``(name, command, context)`` of every ``tlkit`` command, in ``tlkit --help`` order."""
    import typer

    from tlkit.cli import app

    group = typer.main.get_command(app)
    ctx = typer.Context(group, info_name="tlkit")
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        if command is not None and not getattr(command, "hidden", False):
            yield name, command, typer.Context(command, info_name=name, parent=ctx)


def usage(name: str, command, ctx) -> str:
    """``tlkit NAME [OPTIONS] ARGUMENTS``."""
    args = [_argument_name(p) for p in command.get_params(ctx) if p.param_type_name == "argument"]
    return " ".join(["tlkit", name, "[OPTIONS]", *args])


def cli_reference() -> str:
    """The markdown of every command: usage, description, and a table of its arguments and options."""
    out = []
    for name, command, ctx in commands():
        out += [f"## `tlkit {name}`", "", f"```text\n{usage(name, command, ctx)}\n```", ""]
        doc = (command.help or "").replace("\b\n", "").strip()
        if doc:
            out += [html.escape(doc), ""]
        rows = command_rows(command, ctx)
        if rows:
            out += ["| argument / option | description |", "|---|---|"]
            out += [f"| <code>{_cell(first)}</code> | {_cell(text)} |" for first, text in rows]
            out.append("")
    return "\n".join(out)


def on_page_markdown(markdown: str, page, config, files) -> str:  # noqa: ARG001 (the MkDocs hook signature)
    if MARKER in markdown:
        return markdown.replace(MARKER, cli_reference())
    return markdown
