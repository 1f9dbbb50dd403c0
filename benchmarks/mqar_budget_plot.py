"""Plot the learning curves written by benchmarks/mqar_budget.py: test accuracy against
training examples seen (steps x batch), one line per run, labelled by its file name.

    python benchmarks/mqar_budget_plot.py runs/budget/*.json --out curves.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--title", default="MQAR, vocabulary 256, 8 pairs, 64 tokens")
    args = parser.parse_args()

    figure, axes = plt.subplots(figsize=(9.5, 4.5))
    colors = plt.get_cmap("tab20").colors
    for index, path in enumerate(args.runs):
        run = json.loads(path.read_text(encoding="utf-8"))
        batch = run["args"]["batch"]
        examples = [step * batch / 1000 for step, _, _ in run["curve"]]
        accuracy = [acc for _, _, acc in run["curve"]]
        axes.plot(examples, accuracy, marker=".", color=colors[index % 20], label=path.stem)
    axes.set_xlabel("training examples seen (thousands)")
    axes.set_ylabel("test accuracy (all queries)")
    axes.set_ylim(0, 1)
    axes.set_title(args.title)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    figure.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.out, dpi=110)


if __name__ == "__main__":
    main()
