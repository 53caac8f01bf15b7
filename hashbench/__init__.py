"""hashbench: benchmark suite and evaluation harness for unsupervised learning to hash."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "evaluate"]


def __getattr__(name: str):
    # Lazy so that `import hashbench` stays cheap for the CLI and plugins.
    if name == "evaluate":
        from hashbench.metrics import evaluate

        return evaluate
    raise AttributeError(name)
