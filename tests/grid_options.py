"""The options dict `hashbench run` passes to ``build_settings``: every option present, None
when not given (for tests that build a grid from a file without the CLI)."""

from __future__ import annotations

from typing import Any

OPTION_NAMES = ["methods", "datasets", "bits", "seeds", "split_seed", "protocol", "results", "data_root", "device", "force"]


def grid_options(**given: Any) -> dict[str, Any]:
    options: dict[str, Any] = {name: None for name in OPTION_NAMES}
    options["assignments"] = ()
    options.update(given)
    return options
