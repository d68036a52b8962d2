"""Turn locust's `--csv` stats into a JSON file and a markdown table: p50/p95/p99 and RPS per endpoint.

Usage:
    python loadtests/summarize.py --stats results/loadtest/locust_stats.csv \\
        --json docs/loadtest.json --md docs/loadtest.md --command "loadtests/run.sh --users 8 ..."

Reads a stats CSV in the format of the `<prefix>_stats.csv` that `locust --csv <prefix>` writes (columns
Type, Name, Request Count, Failure Count, Median Response Time, ..., Requests/s, Failures/s, 50%, 66%,
..., 99%, 99.9%, 100%) and, when it sits beside it, the matching `*_failures*.csv` for the failure
messages. run.sh passes `<prefix>_stats_final.csv`, which the locustfile writes once the users have
stopped (locust's own file is refreshed every second and misses the end of the run). Times are ms.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# (output key, locust CSV column, kind)
COLUMNS = [
    ("requests", "Request Count", int),
    ("failures", "Failure Count", int),
    ("rps", "Requests/s", float),
    ("failures_per_s", "Failures/s", float),
    ("p50_ms", "50%", float),
    ("p95_ms", "95%", float),
    ("p99_ms", "99%", float),
    ("avg_ms", "Average Response Time", float),
    ("min_ms", "Min Response Time", float),
    ("max_ms", "Max Response Time", float),
]
AGGREGATED = "Aggregated"


def _number(value: str | None, kind: type) -> int | float | None:
    """locust writes 'N/A' (or nothing) for percentiles of an endpoint with no requests."""
    if value is None or value.strip() in ("", "N/A"):
        return None
    return kind(float(value)) if kind is int else float(value)


def read_stats(path: Path) -> list[dict[str, Any]]:
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = {col for _, col, _ in COLUMNS} | {"Type", "Name"}
        missing -= set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{path}: not a locust stats CSV, missing columns {sorted(missing)}")
        rows = []
        for row in reader:
            out: dict[str, Any] = {"method": row["Type"] or None, "name": row["Name"]}
            for key, col, kind in COLUMNS:
                out[key] = _number(row[col], kind)
            requests = out["requests"] or 0
            out["failure_rate"] = round((out["failures"] or 0) / requests, 4) if requests else None
            rows.append(out)
    return rows


def read_failures(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as f:
        return [
            {
                "method": row.get("Method"),
                "name": row.get("Name"),
                "error": row.get("Error"),
                "occurrences": _number(row.get("Occurrences"), int),
            }
            for row in csv.DictReader(f)
        ]


def _git_sha(cwd: Path) -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip() or None


def _fmt(value: Any, digits: int = 0) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def to_markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Load test: USER-LLM gateway",
        "",
        f"Made by `{report['command']}`" if report["command"] else "Made by loadtests/run.sh",
        f"on {report['created_at']} (git {report['git_sha'] or 'unknown'}, {report['machine']}).",
        "Latencies in milliseconds, measured by locust on the client side; RPS over the whole run.",
        "",
        "| endpoint | requests | failures | p50 | p95 | p99 | avg | max | RPS |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in report["endpoints"] + [report["aggregated"]]:
        if row is None:
            continue
        label = f"{row['method']} {row['name']}" if row["method"] else f"**{row['name']}**"
        lines.append(
            f"| {label} | {_fmt(row['requests'])} | {_fmt(row['failures'])} | {_fmt(row['p50_ms'])} "
            f"| {_fmt(row['p95_ms'])} | {_fmt(row['p99_ms'])} | {_fmt(row['avg_ms'], 1)} "
            f"| {_fmt(row['max_ms'])} | {_fmt(row['rps'], 2)} |"
        )
    if report["failures"]:
        lines += ["", "## Failures", "", "| endpoint | error | count |", "|---|---|---:|"]
        for fail in report["failures"]:
            error = (fail["error"] or "").replace("|", "\\|").replace("\n", " ")[:200]
            lines.append(f"| {fail['method']} {fail['name']} | {error} | {_fmt(fail['occurrences'])} |")
    lines += [
        "",
        "Locust reports percentiles from rounded response-time buckets (2 significant digits above",
        "100 ms), so p95/p99 are approximate.",
    ]
    if report["params"].get("csv"):
        lines.append(f"Raw locust CSVs: `{report['params']['csv']}_*.csv`.")
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stats", type=Path, required=True, help="locust <prefix>_stats.csv")
    parser.add_argument("--json", type=Path, default=Path("docs/loadtest.json"))
    parser.add_argument("--md", type=Path, default=Path("docs/loadtest.md"))
    parser.add_argument("--command", default="", help="the command that produced the CSV (recorded)")
    parser.add_argument("--params", default="{}", help="JSON object of run parameters (recorded)")
    args = parser.parse_args(argv)

    try:
        rows = read_stats(args.stats)
    except (OSError, ValueError) as exc:
        parser.error(str(exc))
    failures_csv = args.stats.with_name(args.stats.name.replace("_stats", "_failures", 1))
    report: dict[str, Any] = {
        "command": args.command,
        "params": json.loads(args.params),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "git_sha": _git_sha(Path(__file__).resolve().parent),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "units": {"latency": "ms", "rps": "requests/s"},
        "endpoints": [r for r in rows if r["name"] != AGGREGATED],
        "aggregated": next((r for r in rows if r["name"] == AGGREGATED), None),
        "failures": read_failures(failures_csv) if failures_csv != args.stats else [],
    }
    for path in (args.json, args.md):
        path.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    args.md.write_text(to_markdown(report), encoding="utf-8")
    print(to_markdown(report))
    print(f"wrote {args.json} and {args.md}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
