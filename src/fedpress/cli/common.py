"""The Typer application, its consoles and the error handling every command shares."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.text import Text

from ..errors import FedpressError

__all__ = ["EXIT_ERROR", "app", "err_console", "fail", "handle_errors", "out_console"]

EXIT_ERROR = 2

app = typer.Typer(
    name="fedpress",
    help="Compress federated-learning tensors and state dicts (error-bounded lossy and lossless).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

F = TypeVar("F", bound=Callable[..., Any])


def _width() -> int | None:
    """Console width: the terminal's on a TTY, else ``$COLUMNS`` (160 when unset).

    Read at each call, so a command run in-process with another ``COLUMNS``
    renders at that width."""
    if sys.stdout.isatty():
        return None
    columns = os.environ.get("COLUMNS", "")
    return int(columns) if columns.isdigit() and int(columns) > 0 else 160


def out_console() -> Console:
    """A console on the current ``sys.stdout`` (looked up at each print)."""
    return Console(width=_width())


def err_console() -> Console:
    """A console on the current ``sys.stderr``."""
    return Console(stderr=True)


def fail(message: str) -> typer.Exit:
    """Print ``error: message`` on one line of stderr; the exception to raise (status 2)."""
    line = " ".join(str(message).split())
    err_console().print(Text("error: ", style="bold red") + Text(line, style="red"),
                        soft_wrap=True, highlight=False)
    return typer.Exit(code=EXIT_ERROR)


def handle_errors(fn: F) -> F:
    """Turn fedpress errors and file errors into a one-line message and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except FileNotFoundError as exc:
            name = exc.filename
            raise fail(f"no such file or directory: {name!r}" if name else str(exc)) from None
        except (FedpressError, OSError) as exc:
            raise fail(str(exc) or type(exc).__name__) from None

    return wrapper  # type: ignore[return-value]


def _version_callback(value: bool) -> None:
    if value:
        from .. import __version__

        typer.echo(f"fedpress {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version_callback,
                                          is_eager=True, help="Show the version and exit.")]
    = False,
) -> None:
    """Compress federated-learning tensors and state dicts."""
