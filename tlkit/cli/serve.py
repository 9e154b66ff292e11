"""`tlkit serve`: Label Studio's ML backend over a project (predictions, annotations in, retraining)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from tlkit.active.strategies import DEFAULT_STRATEGY
from tlkit.cli._app import PANEL_ACTIVE, app, console, setup_logging, training_process, user_errors
from tlkit.core.errors import TlkitError


@app.command("serve", rich_help_panel=PANEL_ACTIVE)
def serve_cmd(
    project: Path = typer.Argument(..., help="Project folder (made by tlkit al-init)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (127.0.0.1: this machine only)."),
    port: int = typer.Option(9090, "--port", min=1, max=65535, help="Port to listen on."),
    train: str = typer.Option("head", "--train", help="How retrains train: head | finetune (as al-round)."),
    strategy: str = typer.Option(DEFAULT_STRATEGY, "--strategy", "-s", help="Selection strategy of retrains."),
    batch: int = typer.Option(20, "--batch", "-n", min=1, help="Images each retrain ranks first (its query)."),
    retrain_every: int = typer.Option(10, "--retrain-every", min=0,
                                      help="Retrain after this many new annotations (0: only when Label Studio "
                                      "asks, e.g. its Start Training button)."),
    epochs: Optional[int] = typer.Option(None, "--epochs", min=1, help="Epochs of --train finetune retrains."),
    resolve: str = typer.Option("agree", "--resolve", help="Disagreeing annotators: agree | majority | latest "
                                "(needs LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY to see every annotation)."),
    ssl: Optional[str] = typer.Option(None, "--ssl", help="Head retrains: self-training | off. Default: project.yaml's ssl."),
    add_new: bool = typer.Option(False, "--add-new", help="Add task images that are in the pool folder but not in "
                                 "the pool to the pool (like al-add); without it they are predicted but not added."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log every request and retrain."),
) -> None:
    """Serve a project to Label Studio as its ML backend (TLKIT_SERVE_AUTH=user:password: basic auth; LABEL_STUDIO_URL + LABEL_STUDIO_API_KEY: read every annotation, refresh predictions after retrains)."""
    from tlkit.serve.backend import Backend
    from tlkit.serve.lsclient import LabelStudioClient

    setup_logging(verbose)
    training_process()
    with user_errors():
        try:
            import uvicorn

            from tlkit.serve.app import create_app
        except ImportError:
            raise TlkitError('tlkit serve needs FastAPI and uvicorn: pip install "tlkit[serve]"') from None
        auth = _auth_from_env()
        backend = Backend(project, train=train, strategy=strategy, batch=batch, epochs=epochs,
                          retrain_every=retrain_every, client=LabelStudioClient.from_env(), resolve=resolve,
                          add_new=add_new, ssl=ssl)
        backend.start()
    console.print(f"serving {escape(str(project))} ({backend.version}) on http://{host}:{port}"
                  + (" with basic auth" if auth else "") + ("; Label Studio API: on" if backend.client else ""))
    try:
        uvicorn.run(create_app(backend, auth), host=host, port=port, log_level="info" if verbose else "warning")
    finally:
        backend.stop()


def _auth_from_env() -> tuple[str, str] | None:
    value = os.environ.get("TLKIT_SERVE_AUTH")
    if not value:
        return None
    user, sep, password = value.partition(":")
    if not sep or not user or not password:
        raise TlkitError("TLKIT_SERVE_AUTH must be user:password")
    return user, password
