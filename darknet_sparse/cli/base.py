"""The command group and the options its commands share: the layer every
command module of :mod:`darknet_sparse.cli` registers on."""
from __future__ import annotations

from pathlib import Path

import click

from ..errors import DarknetSparseError
from ..format.layout import FORKS


class ToolError(click.ClickException):
    """A domain error shown as one line, exit code 2."""

    exit_code = 2


class Tool(click.Group):
    """The command group: a library error from any command (or its options)
    becomes a :class:`ToolError`, unless ``--debug`` was given."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except DarknetSparseError as exc:
            if (ctx.obj or {}).get("debug"):
                raise
            raise ToolError(str(exc)) from None


cfg_option = click.option("--cfg", type=click.Path(dir_okay=False, path_type=Path),
                          help="The model's .cfg (default: MODEL.cfg beside the weights).")
fork_option = click.option("--fork", type=click.Choice(("auto",) + FORKS), default="auto", show_default=True,
                           help="Whose layouts to read with; auto goes by cfg features and the header.")
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
weights_argument = click.argument("weights", type=click.Path(dir_okay=False, path_type=Path))


@click.group(cls=Tool, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.version_option(package_name="darknet-sparse")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Sparsify Darknet (YOLO) models: threshold near-zero weights layer by
    layer, inspect the result, and retrain with the patched Darknet."""
    ctx.obj = {"debug": debug}
