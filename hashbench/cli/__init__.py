"""The ``hashbench`` command line. Each command lives in its own module of this package."""

from __future__ import annotations

import sys

import click

from hashbench import __version__
from hashbench.errors import UserError


class UserFacingError(click.ClickException):
    """A :class:`UserError` shown as one line, exit status 2, no traceback."""

    exit_code = 2


class HashbenchGroup(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except UserError as error:
            raise UserFacingError(str(error)) from None

    def main(self, *args, standalone_mode: bool = True, **kwargs):
        """Like click's, but a usage error is one line (no usage block), exit status 2."""
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            result = super().main(*args, standalone_mode=False, **kwargs)
        except click.exceptions.NoArgsIsHelpError as error:
            error.show()
            sys.exit(error.exit_code)
        except click.UsageError as error:
            command = error.ctx.command_path if error.ctx is not None else "hashbench"
            click.echo(f"Error: {error.format_message()} (see `{command} --help`)", err=True)
            sys.exit(error.exit_code)
        except click.ClickException as error:
            error.show()
            sys.exit(error.exit_code)
        except click.exceptions.Abort:
            click.echo("Aborted.", err=True)
            sys.exit(1)
        sys.exit(result if isinstance(result, int) else 0)


@click.group(cls=HashbenchGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="hashbench")
@click.option(
    "--plugin",
    "plugins",
    multiple=True,
    metavar="MODULE",
    help="Import a local module (dotted path or .py file) that defines methods or datasets. Repeatable.",
)
def cli(plugins: tuple[str, ...]) -> None:
    """Benchmark unsupervised hashing methods under one shared, recorded protocol."""
    from hashbench.registry import load_plugins

    load_plugins(plugins)


def _register_commands() -> None:
    from hashbench.cli.check import check_method_command
    from hashbench.cli.data import data_command
    from hashbench.cli.eval import eval_command
    from hashbench.cli.listing import list_command
    from hashbench.cli.reeval import reeval_command
    from hashbench.cli.report import report_command
    from hashbench.cli.run import run_command
    from hashbench.cli.status import status_command

    for command in (list_command, run_command, status_command, report_command, reeval_command, eval_command, data_command, check_method_command):
        cli.add_command(command)


_register_commands()


def main() -> None:
    """Console entry point."""
    cli(prog_name="hashbench")
