"""benchmarks/mqar_budget.py: the budget study's one-run script refuses flag combinations
it cannot honour, and a tiny run writes its curve."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "mqar_budget.py"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("mqar_budget", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse(script, monkeypatch, *argv: str):
    monkeypatch.setattr(sys, "argv", ["mqar_budget.py", *argv])
    return script.parse_args()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("titans", "--theta-init", "0.1", "--inner-lr", "0.1"), "--inner-lr fixes it"),
        (("gated_delta", "--depth", "3"), "--depth: deep memories only"),
        (("attention", "--mlp-only-read"), "--mlp-only-read: deep memories only"),
        (("delta", "--momentum", "0.5", "--decay", "0.1"), "--momentum, --decay: deep"),
    ],
)
def test_refuses_flags_it_cannot_honour(script, monkeypatch, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        parse(script, monkeypatch, *argv, "--out", "unused.json")
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_deep_flags_reach_the_spec(script, monkeypatch):
    args = parse(
        script, monkeypatch, "titans", "--minibatch", "8", "--inner-lr", "0.2", "--out", "x"
    )
    spec = script.base_spec(args.mixer, args.d_model, script.deep_fields(args))
    assert spec["memory"]["deep"] == {
        "depth": 2,
        "expansion": 2,
        "activation": "gelu",
        "minibatch": 8,
        "lr": 0.2,
    }
    assert spec["memory"]["heads"] == 2


def test_a_tiny_run_writes_its_curve(script, monkeypatch, tmp_path):
    out = tmp_path / "run.json"
    argv = ["gated_delta", "--steps", "4", "--eval-every", "2", "--warmup", "1"]
    argv += ["--examples", "64", "--zero-fillers", "--out", str(out)]
    monkeypatch.setattr(sys, "argv", ["mqar_budget.py", *argv])
    monkeypatch.chdir(tmp_path)
    script.main()
    record = json.loads(out.read_text(encoding="utf-8"))
    assert record["steps"] == 4
    assert [point[0] for point in record["curve"]] == [2, 4]
    assert 0.0 <= record["best_accuracy"] <= 1.0
    assert set(record["slices"]) == {"num_pairs=8,seq_len=64", "num_pairs=8,seq_len=128"}


class _SilentLayer:
    """An online MLP layer whose weights read nothing: M(x) = x + 0."""

    def apply(self, h):
        return torch.zeros_like(h)


def test_mlp_only_read_reads_without_the_identity(script, monkeypatch, tmp_path):
    args = parse(script, monkeypatch, "dla", "--mlp-only-read", "--out", "x")
    mixer = script.mixer_factory(args, tmp_path)(0)
    assert mixer(torch.randn(1, 5, 24)).isfinite().all()  # the patched backend runs
    package = type(mixer[1]).__module__.rsplit(".", 1)[0]
    read_online = sys.modules[f"{package}.backend_torch"].read_online
    x = torch.randn(1, 2, 5, 12)
    assert torch.equal(read_online([_SilentLayer(), _SilentLayer()], x), torch.zeros_like(x))
