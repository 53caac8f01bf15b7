"""The ``hashbench`` command line. Each command lives in its own module of this package."""

from __future__ import annotations

import copy
import functools
import importlib
import re
import sys

import click

from hashbench import __version__
from hashbench.errors import UserError


class UserFacingError(click.ClickException):
    """A :class:`UserError` shown as one line, exit status 2, no traceback."""

    exit_code = 2


# Each command's module is imported only when the command runs (or its own --help is
# asked for), so `hashbench --help` never loads numpy, pandas or torch. name → (module:object,
# the one-line help `hashbench --help` shows).
COMMANDS = {
    "list": ("hashbench.cli.listing:list_command", "Show registered methods and datasets with one-line descriptions."),
    "run": ("hashbench.cli.run:run_command", "Train and evaluate METHODS × DATASETS × BITS × SEEDS; finished runs are skipped."),
    "status": ("hashbench.cli.status:status_command", "Show each cell of a grid: ok, failed, stale, damaged, running, interrupted, pending."),
    "report": ("hashbench.cli.report:report_command", "Write tables, timings, plots and report.html from every run record."),
    "reeval": ("hashbench.cli.reeval:reeval_command", "Recompute every run's metrics from its stored codes, without training."),
    "eval": ("hashbench.cli.eval:eval_command", "Evaluate codes made anywhere, from .npy / .npz files."),
    "data": ("hashbench.cli.data:data_command", "Check or obtain dataset files."),
    "check-method": ("hashbench.cli.check:check_method_command", "Run the conformance suite every method must pass."),
}


# The commands that compute metrics: HASHBENCH_THREADS and HASHBENCH_KERNELS are checked
# before they run or write anything (a bad value would otherwise fail every evaluation).
METRIC_COMMANDS = ("run", "eval", "reeval", "check-method")


def _checking_environment(command: click.Command) -> click.Command:
    """``command`` whose callback first checks the metrics' environment variables (once its
    options are parsed, so that --help and usage errors come first)."""
    callback = command.callback
    if callback is None or getattr(callback, "_checks_environment", False):
        return command

    @functools.wraps(callback)
    def checked(*args, **kwargs):
        from hashbench.metrics.engine import check_environment

        check_environment()
        return callback(*args, **kwargs)

    checked._checks_environment = True  # type: ignore[attr-defined]
    wrapped = copy.copy(command)
    wrapped.callback = checked
    return wrapped


class HashbenchGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, _, attribute = COMMANDS[name][0].partition(":")
        command = getattr(importlib.import_module(module), attribute)
        return _checking_environment(command) if name in METRIC_COMMANDS else command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, short_help) for name, (_, short_help) in COMMANDS.items()])

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
            argv = kwargs.get("args", args[0] if args else None)
            hint = spaced_list_hint(error, sys.argv[1:] if argv is None else list(argv))
            click.echo(f"Error: {error.format_message()}{hint} (see `{command} --help`)", err=True)
            sys.exit(error.exit_code)
        except click.ClickException as error:
            error.show()
            sys.exit(error.exit_code)
        except click.exceptions.Abort as error:
            if isinstance(error.__context__, KeyboardInterrupt):  # Ctrl-C: as shells report SIGINT
                click.echo("interrupted", err=True)
                sys.exit(130)
            click.echo("Aborted.", err=True)
            sys.exit(1)
        sys.exit(result if isinstance(result, int) else 0)


_EXTRA = re.compile(r"Got unexpected extra arguments? \((.*)\)")


def spaced_list_hint(error: click.UsageError, argv: list[str]) -> str:
    """For ``--bits 16 32`` (a list written with spaces, so click sees an extra argument):
    ``: lists take commas, not spaces: --bits 16,32``; else nothing."""
    from hashbench.cli.options import CommaList

    match = _EXTRA.fullmatch(error.format_message())
    if match is None or error.ctx is None:
        return ""
    extras = match.group(1).split()
    params = [param for param in error.ctx.command.params if isinstance(param.type, CommaList)]
    listed = {opt: param.type for param in params if isinstance(param, click.Option) for opt in param.opts}
    tokens = [str(token) for token in argv]
    fixes, claimed = [], set()
    for index, token in enumerate(tokens):
        option, equals, value = token.partition("=")
        if option not in listed:
            continue
        start = index + 1
        if not equals:
            if start >= len(tokens):
                continue
            value, start = tokens[start], start + 1
        following = []
        for item in tokens[start:]:
            if item.startswith("-"):
                break
            following.append(item)
        if listed[option].item is int and not all(item.strip(",").isdigit() for item in following):
            continue  # `--bits 16 extra`: not a list of integers
        if set(extras) & set(following):
            claimed.update(following)
            fixes.append(f"{option} " + ",".join(part.strip(",") for part in (value, *following) if part.strip(",")))
    # a positional list (`check-method itq lsh`): what click took for it, then the extras
    arguments = [param for param in params if isinstance(param, click.Argument)]
    rest = [item for item in extras if item not in claimed]
    if rest and len(arguments) == 1 and isinstance(error.ctx.params.get(arguments[0].name), list):
        fixes.append(",".join(str(item) for item in [*error.ctx.params[arguments[0].name], *rest]))
    return f": lists take commas, not spaces: {' '.join(fixes)}" if fixes else ""


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


def main() -> None:
    """Console entry point."""
    cli(prog_name="hashbench")
