"""Bad inputs and faults through the command line: each ends with exit status 2 and a message naming the input and
the fix, without a traceback, before anything is written, and without losing earlier work."""

import gzip
import json
import re
import shutil
from pathlib import Path

import pytest

from plant_hf.cli import main
from plant_hf.data.synthetic import write_synthetic_corpus

from conftest import save_backbone

RECORD = {"id": "d1", "text": "w5 w6 w7", "labels": ["A"]}


@pytest.fixture(scope="module")
def place(tmp_path_factory) -> Path:
    """A tiny corpus and backbone, a finished run (its model and predictions), and damaged copies of them."""
    root = tmp_path_factory.mktemp("failures")
    write_synthetic_corpus(root / "corpus", {"train": 60, "dev": 20, "test": 20}, num_labels=6, length=(20, 40))
    save_backbone(root / "bert")
    assert main(["fit", *quick(root, root / "run"), "--planting", "none", "--num_train_epochs", "1"]) == 0
    (root / "docs.jsonl").write_text(json.dumps(RECORD) + "\n")
    damaged = root / "damaged-model"
    shutil.copytree(root / "run" / "model", damaged)
    weights = damaged / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    pickled = root / "pickled-model"
    shutil.copytree(root / "run" / "model", pickled)
    (pickled / "model.safetensors").rename(pickled / "pytorch_model.bin")
    bad = root / "bad"
    bad.mkdir()
    lines = {
        "not-json.jsonl": b'{"id": "a", "text": "w5"\n',
        "latin1.jsonl": b'{"id": "a", "text": "caf\xe9", "labels": ["A"]}\n',
        "twins.jsonl": (json.dumps(RECORD) + "\n" + json.dumps(RECORD) + "\n").encode(),
        "no-text.jsonl": b'{"id": "a", "labels": ["A"]}\n',
        "labels-string.jsonl": b'{"id": "a", "text": "w5", "labels": "A"}\n',
        "empty.jsonl": b"",
    }
    for name, content in lines.items():
        (bad / name).write_bytes(content)
    whole = gzip.compress(((json.dumps(RECORD) + "\n") * 400).encode())
    (bad / "cut.jsonl.gz").write_bytes(whole[: len(whole) // 2])
    for name in ("not-json", "latin1", "twins", "empty"):
        corpus = root / f"corpus-{name}"
        shutil.copytree(root / "corpus", corpus)
        shutil.copy(bad / f"{name}.jsonl", corpus / "train.jsonl")
    return root


def quick(root: Path, run: Path) -> list[str]:
    return ["--data", str(root / "corpus"), "--backbone", str(root / "bert"), "--output_dir", str(run),
            "--chunk_size", "32", "--max_chunks", "2", "--mig_top_k", "16", "--ranker_epochs", "1",
            "--use_cpu", "True", "--disable_tqdm", "True"]  # fmt: skip


FIT = [
    (["--max_chunks", "0"], "--max_chunks 0: it must be at least 1"),
    (["--chunk_size", "2"], "--chunk_size 2: it must be at least 4"),
    (["--chunk_size", "4096"], "reads at most 256 positions"),
    (["--eval_top_k", "0"], "--eval_top_k 0: it must be at least 1"),
    (["--mig_top_k", "0"], "--mig_top_k 0: it must be at least 1"),
    (["--mig_grades", "0"], "--mig_grades 0: it must be at least 1"),
    (["--lora_r", "0"], "--lora_r 0: it must be at least 1"),
    (["--ranker_batch_size", "0"], "--ranker_batch_size 0"),
    (["--encode_batch_size", "0"], "--encode_batch_size 0"),
    (["--threshold", "1.5"], "--threshold 1.5: a probability"),
    (["--train_fraction", "0"], r"train_fraction must be in \(0, 1\]"),
    (["--train_fraction", "1.5"], r"train_fraction must be in \(0, 1\]"),
    (["--metric_for_best_model", "P@7"], "--metric_for_best_model P@7: the dev evaluation reports"),
    (["--unfreeze_schedule", "head=x"], "Bad unfreeze schedule item 'head=x'"),
    (["--unfreeze_schedule", "attention=soon"], "Bad unfreeze schedule item 'attention=soon'"),
    (["--backbone_mode", "lora", "--lora_target_modules", "nowhere"], r"no linear layer named \['nowhere'\]"),
    (["--dtype", "float17"], "invalid choice: 'float17'"),
    (["--planting", "deep"], "invalid choice: 'deep'"),
    (["--learning_rate", "fast"], "invalid float value: 'fast'"),
    (["--no_such_option", "1"], "unrecognized arguments: --no_such_option"),
    (["--backbone", "{root}/no-backbone"], "no-backbone"),
    (["--data", "{root}/no-corpus"], "no such file or folder"),
    (["--data", "{root}/corpus-not-json"], r"train\.jsonl:1: malformed JSON"),
    (["--data", "{root}/corpus-latin1"], r"train\.jsonl:1: byte 0xe9 at column 25 is not UTF-8"),
    (["--data", "{root}/corpus-twins"], r"train\.jsonl:2: id 'd1' was already given to the document at"),
    (["--data", "{root}/corpus-empty"], "the train split holds no usable document"),
    (["--label_descriptions", "{root}/bad/twins.jsonl"], r"twins\.jsonl:1: no label \(a non-empty string\)"),
    (["--label_descriptions", "{root}/bad/latin1.jsonl"], r"latin1\.jsonl:1: byte 0xe9 at column 25 is not UTF-8"),
]


def run_cli(arguments: list[str], capsys) -> tuple[int, str]:
    try:
        status = main(arguments)
    except SystemExit as exit:  # argparse's own refusals
        status = exit.code
    captured = capsys.readouterr()
    return status, captured.err


@pytest.mark.parametrize(("options", "message"), FIT, ids=[" ".join(options) for options, _ in FIT])
def test_fit_refuses_before_writing(place, tmp_path, capsys, options, message):
    run = tmp_path / "run"
    options = [option.replace("{root}", str(place)) for option in options]
    status, error = run_cli(["fit", *quick(place, run), *options], capsys)
    assert status == 2 and "Traceback" not in error
    assert re.search(message, error), error
    assert not run.exists()


def test_a_continued_run_with_other_settings_is_refused_and_keeps_its_work(place, capsys):
    report = (place / "run" / "eval" / "test_metrics.json").read_text()
    status, error = run_cli(["fit", *quick(place, place / "run"), "--planting", "none", "--num_train_epochs", "1",
                             "--learning_rate", "0.01"], capsys)  # fmt: skip
    assert status == 2 and "holds a run with other settings (learning_rate: 0.002 -> 0.01" in error
    assert (place / "run" / "eval" / "test_metrics.json").read_text() == report


OTHERS = [
    (
        ["predict", "--model", "{model}", "--input", "{root}/docs.jsonl", "--output", "{out}", "--top_k", "-1"],
        "top_k must be a number of labels of at least 1",
    ),
    (
        ["predict", "--model", "{model}", "--input", "{root}/docs.jsonl", "--output", "{out}", "--threshold", "2"],
        r"threshold must be a probability in \[0, 1\]",
    ),
    (
        ["predict", "--model", "{model}", "--input", "{root}/docs.jsonl", "--output", "{out}", "--threshold", "nan"],
        "got nan",
    ),
    (
        ["predict", "--model", "{model}", "--input", "{root}/docs.jsonl", "--output", "{out}", "--threshold", "high"],
        "--threshold high: give a probability",
    ),
    (
        ["predict", "--model", "{model}", "--input", "{root}/docs.jsonl", "--output", "{root}/missing/out.jsonl"],
        "its folder does not exist",
    ),
    (
        ["predict", "--model", "{root}/damaged-model", "--input", "{root}/docs.jsonl", "--output", "{out}"],
        "model.safetensors|header|deserializ",
    ),
    (
        ["predict", "--model", "{root}/pickled-model", "--input", "{root}/docs.jsonl", "--output", "{out}"],
        r"model\.safetensors",
    ),
    (["predict", "--model", "{root}/no-model", "--input", "{root}/docs.jsonl", "--output", "{out}"], "no-model"),
    (
        ["predict", "--model", "{model}", "--input", "{root}/bad/not-json.jsonl", "--output", "{out}"],
        r"not-json\.jsonl:1: malformed JSON",
    ),
    (
        ["predict", "--model", "{model}", "--input", "{root}/bad/no-text.jsonl", "--output", "{out}"],
        r"no-text\.jsonl:1: missing field 'text'",
    ),
    (
        ["predict", "--model", "{model}", "--input", "{root}/bad/cut.jsonl.gz", "--output", "{out}"],
        "breaks off after line",
    ),
    (
        ["explain", "--model", "{model}", "--input", "{root}/bad/latin1.jsonl", "--output_dir", "{root}/pages"],
        "is not UTF-8",
    ),
    (["evaluate", "--predictions", "{root}/bad/labels-string.jsonl", "--data", "{root}/corpus"], "labels-string"),
    (["evaluate", "--predictions", "{root}/no-predictions.jsonl", "--data", "{root}/corpus"], "no-predictions"),
    (
        [
            "evaluate",
            "--predictions",
            "{root}/run/eval/test_predictions.jsonl",
            "--data",
            "{root}/corpus",
            "--split",
            "validation",
        ],
        "no 'validation' split",
    ),
    (["card", "--model", "{root}/no-model"], "no-model"),
]


@pytest.mark.parametrize(("arguments", "message"), OTHERS, ids=[" ".join(a[:1] + a[-2:]) for a, _ in OTHERS])
def test_inference_commands_refuse_by_name(place, tmp_path, capsys, arguments, message):
    fill = {"{model}": str(place / "run" / "model"), "{root}": str(place), "{out}": str(tmp_path / "out.jsonl")}
    for key, value in fill.items():
        arguments = [argument.replace(key, value) for argument in arguments]
    status, error = run_cli(arguments, capsys)
    assert status == 2 and "Traceback" not in error
    assert re.search(message, error), error
    assert not (tmp_path / "out.jsonl").exists()


def test_push_without_network_is_a_message(place, capsys, monkeypatch):
    class Offline:
        def __init__(self, **kwargs):
            pass

        def create_repo(self, *args, **kwargs):
            raise OSError("Failed to resolve 'huggingface.co'")

    monkeypatch.setattr("plant_hf.hub.HfApi", Offline)
    status, error = run_cli(["push", "--folder", str(place / "run" / "model"), "--repo_id", "org/demo"], capsys)
    assert status == 2 and "huggingface.co" in error and "Traceback" not in error
