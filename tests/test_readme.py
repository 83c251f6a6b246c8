"""The README's commands are the ones CI runs, and every Python block and command of it runs, in the README's
order, with tiny local models and a tiny corpus in place of the Hub ids and datasets it names."""

import re
import shlex
import shutil
from pathlib import Path

import pytest

from conftest import FakeHfApi, requires_minilm, save_backbone, tiny_backbone

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
# Commands that this test does not run, and who does: the install and the tests are CI's own steps.
RUN_BY_CI = ("pip install", "python -m pytest")
# Launchers of several processes or GPUs: the files they name must exist (test_recipe runs the CPU DDP launch).
LAUNCHERS = ("torchrun", "accelerate")
# Options that make the recipe's commands quick here: a tiny backbone, short documents, one epoch per stage.
QUICK = "--chunk_size 32 --max_chunks 2 --mig_top_k 16 --ranker_epochs 1 --num_train_epochs 1 --synthetic_documents 80"
RECIPE_COMMANDS = ("fit", "mig", "pretrain")


def fenced_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def all_blocks() -> list[tuple[str, str]]:
    return re.findall(r"```(python|bash)\n(.*?)```", README, flags=re.S)


def commands(block: str) -> list[str]:
    """A bash block's commands: continuation lines joined, comments dropped."""
    lines = block.replace("\\\n", " ").splitlines()
    return [line.split(" # ")[0].strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def test_ci_installs_runs_and_tests_exactly_as_the_readme_says():
    install, main_job, test = (block.strip() for block in fenced_blocks("bash")[:3])
    assert main_job.startswith("plant-hf fit") and "pytest" in test
    ci = (ROOT / ".ci" / "run").read_text()
    assert install in ci and test in ci and main_job in ci


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory) -> dict[str, str]:
    """What the README names, mapped to local stand-ins: a tiny corpus for the dataset, tiny backbones for the
    Hub models."""
    from plant_hf.data.synthetic import write_synthetic_corpus

    root = tmp_path_factory.mktemp("readme")
    write_synthetic_corpus(root / "corpus", {"train": 80, "dev": 20, "test": 20}, num_labels=6, length=(20, 40))
    mistral = root / "mistral"
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_config(tiny_backbone("mistral")).save_pretrained(mistral)
    return {
        "../shared/data/us_bills_110_crs_summary": str(root / "corpus"),
        "mistralai/Mistral-7B-v0.3": str(mistral),
        "--backbone": save_backbone(root / "bert"),
    }


def substituted(text: str, stand_ins: dict[str, str]) -> str:
    for name, local in stand_ins.items():
        if not name.startswith("--"):
            text = text.replace(name, local)
    return text


def run_command(command: str, stand_ins: dict[str, str], monkeypatch) -> None:
    if command.startswith(RUN_BY_CI):
        return
    words = shlex.split(substituted(command, stand_ins))
    if words[0] in LAUNCHERS:
        for word in words:
            if word.endswith((".py", ".yaml")) and "/" in word:
                assert (ROOT / word).exists(), f"README names {word}, which does not exist"
        return
    assert words[0] == "plant-hf", f"README command not covered by this test: {command}"
    if words[1] in RECIPE_COMMANDS:
        words += ["--backbone", stand_ins["--backbone"], *QUICK.split()]
    if words[1] == "evaluate":
        # The README's prediction file: the test split predicted by the recipe run above.
        shutil.copy("runs/bills/eval/test_predictions.jsonl", "preds.jsonl")
    if words[1] == "push":
        api = FakeHfApi()
        monkeypatch.setattr("plant_hf.hub.HfApi", lambda **kwargs: api)
    from plant_hf.cli import main

    assert main(words[1:]) == 0, f"README command failed: {command}"
    if words[1] == "push":
        assert api.commits and api.commits[0]["repo_id"] == words[words.index("--repo_id") + 1]


@requires_minilm
def test_every_readme_block_runs(stand_ins, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "docs.jsonl").write_text(
        '{"id": "d1", "text": "w5 w6 w7 w8"}\n{"id": "d2", "text": "w9 w10 w11"}\n', encoding="utf-8"
    )
    for language, block in all_blocks():
        if language == "python":
            exec(compile(substituted(block, stand_ins), "README.md", "exec"), {})
        else:
            for command in commands(block):
                run_command(command, stand_ins, monkeypatch)
    assert "torch.Size([1, 3," in capsys.readouterr().out
    produced = ("runs/demo/model/model.safetensors", "plant-icd/config.json", "pages/index.html", "preds.metrics.json")
    assert all((tmp_path / path).exists() for path in produced)
