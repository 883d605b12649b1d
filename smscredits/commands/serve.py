"""`serve`: the HTTP service for gateway hosts (``smscredits.serve``; the ``serve`` extra)."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from smscredits.commands.base import command, state
from smscredits.errors import BadInput

if TYPE_CHECKING:
    from smscredits.serve.app import Settings


def register(root: typer.Typer) -> None:
    @command(root, "serve", rich_help_panel="Prices and charging",
             example="smscredits serve --host 127.0.0.1 --port 8787")
    def serve(
        host: Annotated[str, typer.Option(help="Address to listen on; any but a loopback "
                                          "address needs a token.")] = "127.0.0.1",
        port: Annotated[int, typer.Option(help="Port to listen on.", min=1, max=65535)] = 8787,
        workers: Annotated[int, typer.Option(help="Worker processes (on SQLite one writes at "
                                             "a time: keep 1).", min=1, max=64)] = 1,
        tokens: Annotated[str | None, typer.Option(
            metavar="FILE", help="Tokens file: ROLE TOKEN per line (gateway or admin), "
            "owner-only.")] = None,
        max_body: Annotated[int, typer.Option(help="Largest request body, bytes.",
                                              min=1024, max=256 * 1024 * 1024)]
        = 4 * 1024 * 1024,
        access_log: Annotated[bool, typer.Option(help="Log each request (never its query "
                                                 "or token).")] = True,
        drain: Annotated[int, typer.Option(help="Seconds a stop (SIGTERM) waits for requests "
                                           "still arriving before it closes them.", min=0,
                                           max=3600)] = 10,
    ) -> None:
        """Serve the charging API over HTTP (charge, hold, settle, void, DLRs, metrics)."""
        try:
            import uvicorn

            from smscredits.serve.app import Settings, create_app
            from smscredits.serve.auth import is_loopback, load_tokens
        except ImportError as e:
            raise BadInput(f"serve needs the serve extra: pip install 'smscredits[serve]' "
                           f"({e.name} is missing)") from None
        from smscredits.storage.engine import open_db

        run = state()
        tokens_file = Path(tokens) if tokens is not None else None
        known = load_tokens(tokens_file)
        if known.open and not is_loopback(host):
            raise BadInput(f"--host {host} is not a loopback address: give a token (config "
                           "set serve.token, or --tokens FILE) before listening on it")
        open_db(run.db_flag, actor=run.actor, create=False).dispose()  # fails early, exit 7
        settings = Settings(db=run.db_flag, actor=run.actor, tokens_file=tokens_file,
                            max_body=max_body)
        config = _logging(access_log)
        # uvicorn drains on SIGTERM (and ^C), then raises the signal again for the handler it
        # found: a handler that does nothing lets `serve` end with 0, its work done.
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: None)
        # A client that sends half a request and stalls must not keep a stop waiting for
        # ever: after ``drain`` seconds what is left is closed (queued charges still commit).
        options: dict[str, Any] = dict(host=host, port=port, log_config=config, access_log=False,
                       server_header=False, lifespan="on", timeout_graceful_shutdown=drain)
        if workers == 1:
            uvicorn.run(create_app(settings), **options)
            return
        _serve_workers(settings, workers, options)


def _serve_workers(settings: Settings, workers: int, options: dict[str, Any]) -> None:
    """Several worker processes: each imports the app anew, from the settings in its
    environment; their metrics go to one shared directory."""
    import tempfile

    import uvicorn

    from smscredits.serve.app import SETTINGS_ENV

    with tempfile.TemporaryDirectory(prefix="smscredits-metrics-") as metrics_dir:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
        os.environ[SETTINGS_ENV] = settings.to_json()
        uvicorn.run("smscredits.serve.app:from_environment", factory=True, workers=workers,
                    **options)


def _logging(access: bool) -> dict[str, object]:
    """uvicorn's messages and the service's own, one line each on stderr; the access log
    (``smscredits.access``) at INFO when asked for."""
    line = {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}
    return {
        "version": 1, "disable_existing_loggers": False,
        "formatters": {"line": line},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "line",
                                "stream": "ext://sys.stderr"}},
        "loggers": {
            "uvicorn": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
            "smscredits": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
            "smscredits.access": {"handlers": ["stderr"], "propagate": False,
                                  "level": "INFO" if access else "WARNING"},
        },
    }
