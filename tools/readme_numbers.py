"""Regenerate the README's numbers from the example results (`make example` runs it).

Each generated block of README.md sits between ``<!-- numbers:NAME -->`` and
``<!-- /numbers:NAME -->``; this script rewrites what is between them from the run records
under ``reports/digits/results``, so the text never drifts from the records. Blocks:

* ``digits-grid``: how many runs, their summed time, and the machine they ran on;
* ``digits-table``: mAP@100 of every method at each code length (mean ± std over seeds) and
  fit times.

Usage: python tools/readme_numbers.py [--results DIR] [--readme README.md] [--check]
(--check exits 1 when the README differs from what the records give, writing nothing).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from hashbench.report.results import frame_from_records, read_records
from hashbench.storage.records import RunRecord

ROOT = Path(__file__).resolve().parent.parent


def _machine(records: list[RunRecord]) -> str:
    environments = [r.environment or {} for r in records]
    models = sorted({e.get("cpu_model") or e.get("processor") or "unknown CPU" for e in environments})
    cores = sorted({e.get("cpu_count") for e in environments if e.get("cpu_count")})
    memory = sorted({e.get("memory_gb") for e in environments if e.get("memory_gb")})
    parts = [", ".join(models)]
    if cores:
        parts.append(f"{'/'.join(map(str, cores))} cores")
    if memory:
        parts.append(f"{'/'.join(f'{m:g}' for m in memory)} GB")
    return ", ".join(parts)


def _execution(execution: dict) -> str:
    if execution.get("executor") == "local":
        return f"{execution.get('jobs', '?')} worker processes, {execution.get('threads_per_job', '?')} thread(s) each"
    return str(execution.get("executor", "unknown"))


def grid_block(records: list[RunRecord]) -> str:
    # The sum of the runs' own times, not the span from first start to last finish: runs
    # redone after a method changes (the others kept) would stretch a span over days.
    minutes = sum(r.timings.get("total", 0.0) for r in records) / 60
    executions = sorted({_execution(r.execution or {}) for r in records})
    return (
        f"{len(records)} runs, {minutes:.1f} minutes of training, encoding and evaluation summed over the runs "
        f"({', '.join(executions)}) on {_machine(records)}."
    )


def table_block(records: list[RunRecord]) -> str:
    frame = frame_from_records(records)
    frame = frame[frame["status"] == "ok"]
    bits = sorted(frame["bits"].unique())
    order = list(dict.fromkeys(frame.sort_values("method")["method"]))
    k = sorted({int(v) for v in frame["map_k"].dropna()})
    header = ["method", "profile", *[f"{b} bits" for b in bits], "fit (s)"]
    lines = [f"mAP@{'/'.join(map(str, k))}, mean ± std over seeds {', '.join(map(str, sorted(frame['seed'].unique())))}:", ""]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("| --- | --- |" + " ---: |" * (len(bits) + 1))
    for method in order:
        rows = frame[frame["method"] == method]
        cells = [method, ", ".join(sorted({str(p) for p in rows["profile"].dropna()})) or "—"]
        for b in bits:
            values = rows[rows["bits"] == b]["map"].dropna()
            cells.append("—" if values.empty else f"{values.mean():.3f} ± {values.std(ddof=1) if len(values) > 1 else 0:.3f}")
        fit = rows["timings.fit"].dropna()
        low, high = fit.min(), fit.max()
        cells.append(f"{low:.1f}" if high - low < 0.5 else f"{low:.0f}–{high:.0f}" if low >= 10 else f"{low:.1f}–{high:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


BLOCKS = {"digits-grid": grid_block, "digits-table": table_block}


def render(readme: str, records: list[RunRecord]) -> str:
    for name, build in BLOCKS.items():
        pattern = re.compile(rf"(<!-- numbers:{name} -->\n).*?(\n<!-- /numbers:{name} -->)", re.S)
        if not pattern.search(readme):
            raise SystemExit(f"README has no block {name!r} (<!-- numbers:{name} --> ... <!-- /numbers:{name} -->)")
        text = build(records)
        readme = pattern.sub(lambda match, text=text: match.group(1) + text + match.group(2), readme)
    return readme


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=ROOT / "reports" / "digits" / "results")
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md")
    parser.add_argument("--check", action="store_true", help="exit 1 when the README is out of date; write nothing")
    args = parser.parse_args()
    records, warnings = read_records(args.results)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if not records:
        raise SystemExit(f"no run records under {args.results}; run `make example` first")
    old = args.readme.read_text()
    new = render(old, records)
    if args.check:
        if new != old:
            print(f"{args.readme} is out of date with {args.results}; run python tools/readme_numbers.py", file=sys.stderr)
            return 1
        return 0
    args.readme.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
