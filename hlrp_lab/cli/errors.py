"""How the command line reports known errors: one line on stderr and an exit code."""

from collections.abc import Iterator
from contextlib import contextmanager

import typer

from hlrp_lab.lib.errors import REQUEUE_EXIT_CODE, Interrupted, RunError, SpecError

ML_MODULES = {"torch", "ray", "transformers", "webdataset", "safetensors", "vector_quantize_pytorch"}


@contextmanager
def cli_errors() -> Iterator[None]:
    """Known user errors become one line on stderr: exit 2 for a bad spec, 1 for a failed run."""
    try:
        yield
    except SpecError as err:
        typer.echo(f"error: {one_line(err)}", err=True)
        raise typer.Exit(2) from None
    except Interrupted as err:
        typer.echo(f"stopped: {one_line(err)}", err=True)
        raise typer.Exit(REQUEUE_EXIT_CODE) from None
    except RunError as err:
        typer.echo(f"error: {one_line(err)}", err=True)
        raise typer.Exit(1) from None
    except ModuleNotFoundError as err:
        if err.name not in ML_MODULES:
            raise
        typer.echo(
            f"error: this command needs '{err.name}', which the orchestration-only install leaves out; "
            "install the training dependencies with `uv sync` (default groups)",
            err=True,
        )
        raise typer.Exit(2) from None


def one_line(err: Exception) -> str:
    """The message with any line break escaped: an error is one line whatever text it quotes."""
    return str(err).replace("\r", "\\r").replace("\n", "\\n")
