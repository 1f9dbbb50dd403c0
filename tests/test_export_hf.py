"""`mcgen export --model`: the Hugging Face model family written beside the package.

The fast tests check what is written (files, manifest, extra, README, names) on a tiny
spec, and run the exported HF tests of that tiny spec. The slow ones export the committed
specs/grm.yaml (matrix memory) and specs/titans_grm.yaml (deep memory) and run their
exported HF tests and README example, as a user would after `pip install DIR[hf,test]`.
"""

from __future__ import annotations

import ast
import importlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_export import (
    expected_files,
    load_toml,
    manifest,
    run,
    sha256,
    subprocess_env,
    tiny,
    tree,
)

from mcgen.export import class_prefix, export_spec
from mcgen.packages import import_package

pytest.importorskip("transformers", minversion="5.24")

REPO = Path(__file__).resolve().parent.parent
MODEL_FILES = {"tiny_grm/hf.py", "tests/test_tiny_grm_hf.py"}


@pytest.fixture(scope="module")
def model_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("model_export")
    (root / "tiny_grm.yaml").write_text(tiny())
    spec = root / "tiny_grm.yaml"
    result = run("export", spec, "--out", root / "project", "--model", "--no-test")
    assert result.exit_code == 0, result.output
    return root / "project"


def test_model_adds_the_hf_module_its_tests_and_the_extra(model_export: Path) -> None:
    assert set(tree(model_export)) == expected_files("tiny_grm") | MODEL_FILES
    section = manifest(model_export)["export"]
    assert section["model"] is True
    assert section["command"].endswith("--name tiny_grm --model")  # makes the export again
    for relative in MODEL_FILES:  # hashed as project files: `validate --exported` checks them
        assert section["files"][relative] == sha256(model_export / relative)
    extras = load_toml(model_export / "pyproject.toml")["project"]["optional-dependencies"]
    assert extras["hf"] == ["transformers>=5.24"]
    # transformers stays out of the package's own requirements.
    assert not any(
        "transformers" in d
        for d in load_toml(model_export / "pyproject.toml")["project"]["dependencies"]
    )


def test_without_model_there_is_no_hf_module_nor_extra(tmp_path: Path) -> None:
    (tmp_path / "tiny_grm.yaml").write_text(tiny())
    result = run("export", tmp_path / "tiny_grm.yaml", "--out", tmp_path / "out", "--no-test")
    assert result.exit_code == 0, result.output
    assert set(tree(tmp_path / "out")) == expected_files("tiny_grm")
    assert manifest(tmp_path / "out")["export"]["model"] is False
    assert (
        "hf"
        not in load_toml(tmp_path / "out" / "pyproject.toml")["project"]["optional-dependencies"]
    )


def test_the_hf_module_defines_and_registers_the_family_without_mcgen(model_export: Path) -> None:
    source = (model_export / "tiny_grm" / "hf.py").read_text()
    tree_ = ast.parse(source)
    classes = {node.name for node in tree_.body if isinstance(node, ast.ClassDef)}
    family = {"TinyGrmConfig", "TinyGrmModel", "TinyGrmForCausalLM", "TinyGrmCache"}
    assert family <= classes
    imported = {
        (node.module or "").split(".")[0]
        for node in ast.walk(tree_)
        if isinstance(node, ast.ImportFrom) and node.level == 0
    }
    assert "mcgen" not in imported and "transformers" in imported
    for auto in ("AutoConfig", "AutoModel", "AutoModelForCausalLM"):
        assert re.search(rf"^{auto}\.register\(", source, re.M), auto
    # The package's own modules never import transformers: it is an extra.
    for path in (model_export / "tiny_grm").glob("*.py"):
        if path.name != "hf.py":
            assert "transformers" not in path.read_text(), path.name


@pytest.mark.parametrize(("name", "prefix"), [("tiny_grm", "TinyGrm"), ("my_layer2", "MyLayer2")])
def test_class_prefix_is_the_camel_case_name(name: str, prefix: str) -> None:
    assert class_prefix(name) == prefix


def run_hf_tests(export_dir: Path, name: str) -> subprocess.CompletedProcess:
    """The export's HF tests alone, with pytest from the export's folder."""
    tests = f"tests/test_{name}_hf.py"
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", tests],
        cwd=export_dir,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_cached_generation_equals_recomputing_in_process(model_export: Path) -> None:
    """The fast tier's check of the model (the exported tests, slow, check the rest)."""
    package = import_package(model_export / "tiny_grm")
    hf = importlib.import_module(f"{package.__name__}.hf")
    config = hf.TinyGrmConfig(vocab_size=17, hidden_size=16, num_hidden_layers=2, pad_token_id=0)
    torch.manual_seed(0)
    model = hf.TinyGrmForCausalLM(config).double().eval()
    ids = torch.tensor([[0, 0, 0, 0, 3, 4, 5], [1, 2, 3, 4, 5, 6, 7]])  # crosses 8 when decoding
    options = {"attention_mask": (ids != 0).long(), "max_new_tokens": 5, "pad_token_id": 0}
    cached = model.generate(ids, use_cache=True, **options)
    assert torch.equal(cached, model.generate(ids, use_cache=False, **options))
    alone = model.generate(ids[:1, 4:], use_cache=True, max_new_tokens=5, pad_token_id=0)
    assert torch.equal(cached[0, -5:], alone[0, -5:])  # the padding is as if absent


@pytest.mark.slow
def test_the_exported_hf_tests_pass(model_export: Path) -> None:
    done = run_hf_tests(model_export, "tiny_grm")
    assert done.returncode == 0, done.stdout + done.stderr
    summary = done.stdout.strip().splitlines()[-1]
    assert re.search(r"\b\d+ passed\b", summary) and "skipped" not in summary, summary


def test_validate_exported_names_an_edited_hf_module(model_export: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(model_export, tmp_path / "copy"))
    path = copy / "tiny_grm" / "hf.py"
    path.write_text(path.read_text() + "\n# edited\n")
    result = run("validate", "--exported", copy)
    assert result.exit_code == 2
    assert f"{path}: edited since it was exported" in result.stderr


def test_export_json_reports_the_model(tmp_path: Path) -> None:
    (tmp_path / "tiny_grm.yaml").write_text(tiny())
    result = run(
        "export",
        tmp_path / "tiny_grm.yaml",
        "--out",
        tmp_path / "out",
        "--model",
        "--no-test",
        "--json",
    )
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)["exported"]
    assert document["model"] is True
    assert set(document["files"]) >= MODEL_FILES


def _readme_examples(export_dir: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (export_dir / "README.md").read_text(), re.S)


@pytest.mark.slow
@pytest.mark.parametrize("spec_name", ["grm", "titans_grm"])
def test_a_committed_spec_exports_a_working_model(spec_name: str, tmp_path: Path) -> None:
    export_dir = tmp_path / "project"
    export_spec(REPO / "specs" / f"{spec_name}.yaml", export_dir, test=False, model=True)
    done = run_hf_tests(export_dir, spec_name)
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"\b8 passed\b", done.stdout), done.stdout
    # The README's model example runs as written (it saves the model in the working folder).
    [_, hf_example] = _readme_examples(export_dir)
    ran = subprocess.run(
        [sys.executable, "-c", hf_example],
        cwd=export_dir,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert ran.returncode == 0, ran.stderr
    assert (export_dir / "my_model" / "config.json").is_file()


@pytest.mark.slow
def test_the_llama_swap_example_trains_and_generates(tmp_path: Path) -> None:
    # As the example's docstring says: export specs/grm.yaml, then run it on the export.
    export_spec(REPO / "specs" / "grm.yaml", tmp_path / "my_grm", test=False)
    done = subprocess.run(
        [sys.executable, str(REPO / "examples" / "hf_llama_swap.py"), str(tmp_path / "my_grm")],
        cwd=tmp_path,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "Llama with 2 grm MCLayers in place of attention"
    first, last = map(float, re.fullmatch(r"loss (\S+) -> (\S+) in 30 steps", lines[1]).groups())
    assert last < first / 2
    # Trained on counting, it counts on from the prompt 5..10.
    assert re.fullmatch(r"continues \[5, 6, 7, 8, 9, 10\] with \[11, 12, 13, 14, .*\]", lines[2])


def test_a_deep_layer_takes_the_hf_call_with_padding_and_decoding(build_tiny) -> None:
    """What the deep-memory model's generate() relies on, on the layer itself: left padding
    is as if absent, and decoding from the cache equals recomputing the prefix."""
    package = build_tiny(recurrence="titans", deep="{minibatch: 4}", chunk_size=None)
    torch.manual_seed(0)
    layer = package.MCLayer(16, layer_idx=0).double()
    with torch.no_grad():  # a last MLP layer of zeros would make every memory read v itself
        for weight in layer.memory_init:
            weight.normal_(0.0, 0.3)
    lengths = [11, 19, 4]
    width = max(lengths)
    x = torch.randn(len(lengths), width, 16, dtype=torch.float64)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for b, length in enumerate(lengths):
        mask[b, width - length :] = 1
    out, attentions, cache = layer(hidden_states=x, attention_mask=mask, use_cache=True)
    assert attentions is None and isinstance(cache, package.MCStateCache)
    for b, length in enumerate(lengths):
        alone = layer(x[b : b + 1, width - length :])
        assert torch.allclose(out[b : b + 1, width - length :], alone, rtol=0, atol=1e-9), b

    new = torch.randn(len(lengths), 6, 16, dtype=torch.float64)
    for t in range(new.shape[1]):  # crosses segment ends (8) and mini-batch ends (4)
        mask = torch.cat([mask, torch.ones(len(lengths), 1, dtype=torch.long)], dim=1)
        step, _, cache = layer(
            hidden_states=new[:, t : t + 1],
            attention_mask=mask,
            past_key_values=cache,
            use_cache=True,
        )
        whole, _, _ = layer(hidden_states=torch.cat([x, new[:, : t + 1]], 1), attention_mask=mask)
        assert torch.allclose(step[:, 0], whole[:, -1], rtol=0, atol=1e-9), t
    assert cache.get_seq_length(0) == width + new.shape[1]
