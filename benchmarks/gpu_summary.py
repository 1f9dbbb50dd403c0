"""Summarise a GPU results folder (benchmarks/gpu_session.sh, gpu_study.sh) as markdown tables.

    python benchmarks/gpu_summary.py RESULTS_DIR [RESULTS_DIR ...]

Validation: one row per spec, shape and dtype, with the output's error, the worst
gradient's, the streaming checks' and the verdict. Benchmarks: the bench logs' tables.
"""

from __future__ import annotations

import json
import re
import sys
from collections import defaultdict
from pathlib import Path


def validation_rows(results: Path) -> list[str]:
    lines = [
        "| spec | B x T x H x K x V | dtype | output | worst gradient | pieces | decode | result |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for path in sorted(results.glob("validate_*.json")):
        # validate_<spec>[_<shape>_<dtype>].json: one file per spec, or per check.
        spec = re.sub(r"_\d+(x\d+){4}_(float32|bfloat16)$", "", path.stem.removeprefix("validate_"))
        text = path.read_text().strip()
        if not text:
            err = path.with_suffix(".err").read_text().strip().splitlines()
            reason = err[-1] if err else "no output (timed out?)"
            lines.append(f"| {spec} | - | - | - | - | - | - | **no result**: {reason[:200]} |")
            continue
        report = json.loads(text)
        groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
        for check in report["checks"]:
            groups[(check["shape"], check["dtype"])].append(check)
        for (shape, dtype), checks in groups.items():
            by = {c["quantity"]: c for c in checks}
            grads = [c for c in checks if c["quantity"].startswith("grad")]
            worst = max(grads, key=lambda c: c["error"] / c["tolerance"]) if grads else None

            def cell(c):
                return "-" if c is None else f"{c['error']:.1e}"

            worst_cell = "-" if worst is None else f"{worst['error']:.1e} ({worst['quantity'][5:]})"
            verdict = "ok" if all(c["passed"] for c in checks) else "**FAIL**"
            lines.append(
                f"| {spec} | {shape} | {dtype} | {cell(by.get('output'))} | {worst_cell} "
                f"| {cell(by.get('pieces'))} | {cell(by.get('decode'))} | {verdict} |"
            )
    return lines


def main() -> int:
    folders = [Path(arg) for arg in sys.argv[1:]]
    for folder in folders:
        env = folder / "environment.txt"
        if env.exists():
            print(env.read_text().strip().splitlines()[-1])
    rows = [row for folder in folders for row in validation_rows(folder)[2:]]
    print("\n".join(validation_rows(folders[0])[:2] + sorted(rows)))
    for folder in folders:
        for log in sorted(folder.glob("gpu_*.log")):
            print(f"\n## {log.stem}\n")
            print("\n".join(log.read_text().splitlines()[-60:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
