"""The whole recipe (plant-hf fit): stages, backbone modes, resume, distributed runs and bad requests."""

import dataclasses
import importlib.util
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard
from safetensors.torch import load_file
from transformers import AutoModel

from plant_hf import PlantForMultiLabelClassification
from plant_hf.data import DataFormatError, LabelVocabulary, load_corpus, read_predictions
from plant_hf.data.synthetic import write_synthetic_corpus
from plant_hf.metrics import TopKPredictions, as_truth_matrix, threshold_metrics
from plant_hf.recipe import PlantArguments, fit, prepare_run
from plant_hf.training.trainer import GradualUnfreezing, PlantTrainer, PlantTrainingArguments

from conftest import random_ids, save_backbone, tiny_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("recipe")
    write_synthetic_corpus(root / "corpus", {"train": 160, "dev": 40, "test": 40}, num_labels=8, length=(20, 50))
    for family in ("bert", "llama", "mistral", "phi3"):
        save_backbone(root / family, family=family)
    return root


def arguments(workspace, run, family="bert", training=None, **plant):
    plant_arguments = PlantArguments(
        data=str(workspace / "corpus"),
        backbone=str(workspace / family),
        chunk_size=32,
        max_chunks=2,
        mig_top_k=16,
        ranker_epochs=1,
        **plant,
    )
    options = {"num_train_epochs": 2, "per_device_train_batch_size": 8, "seed": 0, **(training or {})}
    training_arguments = PlantTrainingArguments(output_dir=str(run), use_cpu=True, disable_tqdm=True, **options)
    return plant_arguments, training_arguments


def logged_losses(run: Path) -> list[float]:
    states = sorted((run / "checkpoints").glob("checkpoint-*/trainer_state.json"), key=lambda p: p.stat().st_mtime)
    history = json.loads(states[-1].read_text())["log_history"]
    return [entry["loss"] for entry in history if "loss" in entry]


def test_fit_runs_every_stage_and_skips_what_is_done(workspace, tmp_path):
    run = tmp_path / "run"
    report = fit(*arguments(workspace, run, training={"logging_steps": 5}))
    for artifact in (
        "mig/mig_table.safetensors",
        "ranker/ranker.safetensors",
        "model/model.safetensors",
        "model/README.md",
        "model/label_vocabulary.json",
        "model/plant_training.json",
        "eval/test_metrics.json",
        "eval/test_predictions.jsonl",
        "eval/test_buckets.png",
    ):
        assert (run / artifact).exists(), artifact
    losses = logged_losses(run)
    assert losses[-1] < losses[0]
    assert report["documents"] == 40 and 0.0 <= report["P@1"] <= 1.0
    thresholds = np.array(json.loads((run / "model" / "config.json").read_text())["label_thresholds"])
    vocabulary = LabelVocabulary.load(run / "model" / "label_vocabulary.json")
    index = {label: i for i, label in enumerate(vocabulary.labels)}
    saved = read_predictions(run / "eval" / "test_predictions.jsonl")
    predictions = TopKPredictions(
        np.array([[index[label] for label in record.labels] for record in saved]),
        np.array([record.scores for record in saved]),
        len(vocabulary),
    )
    truth, _ = vocabulary.evaluation_targets(load_corpus(workspace / "corpus").splits["test"]["labels"])
    truth = as_truth_matrix(truth, len(vocabulary))
    assert thresholds.shape == (len(vocabulary),)
    assert report["macro_f1"] == pytest.approx(threshold_metrics(truth, predictions, thresholds)["macro_f1"])
    assert report["fixed_threshold"]["macro_f1"] == pytest.approx(threshold_metrics(truth, predictions)["macro_f1"])
    card = ModelCard.load(run / "model" / "README.md")
    assert {result.metric_type for result in card.data.eval_results} >= {"P@1", "P@5", "PSP@5"}
    assert "contextual ranker (listwise loss on the MIG grades)" in card.text
    model = AutoModel.from_pretrained(run / "model").eval()
    first = json.loads((run / "eval" / "test_predictions.jsonl").read_text().splitlines()[0])
    labels = json.loads((run / "model" / "label_vocabulary.json").read_text())["labels"]
    assert first["labels"][0] in labels
    stamp = (run / "model" / "model.safetensors").stat().st_mtime
    again = fit(*arguments(workspace, run, training={"logging_steps": 5}))
    assert (again["P@1"], again["PSP@5"]) == (report["P@1"], report["PSP@5"])
    assert (run / "model" / "model.safetensors").stat().st_mtime == stamp  # nothing was trained again
    assert type(model) is PlantForMultiLabelClassification


@pytest.mark.parametrize("family", ["llama", "mistral", "phi3"])
def test_lora_fine_tuning_lowers_the_loss_and_reloads_identically(workspace, tmp_path, family):
    from peft import PeftModel

    run = tmp_path / "run"
    plant_arguments, training = arguments(
        workspace,
        run,
        family=family,
        backbone_mode="lora",
        planting="none",
        label_init="random",  # a head that starts from nothing: its loss must fall
        lora_r=4,
        training={"logging_steps": 4, "learning_rate": 1e-2, "backbone_learning_rate": 1e-2},
    )
    fit(plant_arguments, training)
    losses = logged_losses(run)
    assert losses[-1] < losses[0]
    merged = PlantForMultiLabelClassification.from_pretrained(run / "model").eval()
    merged.set_memory(None)  # the adapter is the fine-tuned backbone and head; the memory came after
    base = PlantForMultiLabelClassification.from_backbone(
        str(workspace / family),
        id2label=merged.config.id2label,
        chunk_size=32,
        max_chunks=2,
        context_gate=merged.config.context_gate,
    )
    adapted = PeftModel.from_pretrained(base, str(run / "adapter")).eval()
    ids = random_ids(2, 40)
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, adapted(input_ids=ids).logits, atol=1e-5, rtol=1e-4)
    assert "lora" not in " ".join(load_file(str(run / "model" / "model.safetensors")))


def test_planted_lora_run_on_an_encoder_under_bf16_autocast(workspace, tmp_path):
    run = tmp_path / "run"
    report = fit(
        *arguments(workspace, run, backbone_mode="lora", lora_r=4, training={"num_train_epochs": 1, "bf16": True})
    )
    info = json.loads((run / "model" / "plant_training.json").read_text())
    assert info["planting"]["kind"] == "contextual"
    assert info["finetuning"]["precision"] == "bf16 autocast"
    assert "bf16 autocast" in (run / "model" / "README.md").read_text()
    assert 0.0 <= report["P@1"] <= 1.0 and all(map(math.isfinite, logged_losses(run)))


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="needs bitsandbytes (extra `quant`)")
def test_qlora_smoke_run(workspace, tmp_path):
    run = tmp_path / "run"
    report = fit(
        *arguments(
            workspace,
            run,
            family="llama",
            backbone_mode="qlora",
            planting="none",
            lora_r=4,
            training={"max_steps": 3, "eval_strategy": "no", "save_strategy": "no", "load_best_model_at_end": False},
        )
    )
    assert (run / "adapter" / "adapter_model.safetensors").exists()
    assert torch.isfinite(torch.tensor(report["P@1"]))


def test_discriminative_learning_rates_and_gradual_unfreezing(tmp_path, tokenizer):
    from datasets import Dataset
    from transformers import TrainerCallback

    from plant_hf.data import LabelVocabulary, PlantDataCollator, tokenize_split

    from conftest import tiny_model

    texts = [" ".join(f"w{i % 50 + 4} w{(i * 7) % 60 + 4}" for _ in range(3)) for i in range(32)]
    labels = [[f"L{i % 3}"] for i in range(32)]
    vocabulary = LabelVocabulary.from_training(labels)
    data, _ = tokenize_split(
        Dataset.from_dict({"id": [str(i) for i in range(32)], "text": texts, "labels": labels}),
        tokenizer,
        vocabulary,
        chunk_size=8,
    )
    model = tiny_model("bert", num_labels=3, chunk_size=8).train()
    args = PlantTrainingArguments(
        output_dir=str(tmp_path),
        num_train_epochs=3,
        per_device_train_batch_size=8,
        learning_rate=1e-2,
        planted_lr_fraction=0.25,
        backbone_learning_rate=1e-3,
        use_cpu=True,
        eval_strategy="no",
        save_strategy="no",
        load_best_model_at_end=False,
        disable_tqdm=True,
        logging_strategy="no",
    )
    snapshots = []

    class Record(TrainerCallback):  # the three groups' weights at every epoch end
        def on_epoch_end(self, args, state, control, model=None, **kwargs):
            snapshots.append(
                {
                    "head": model.score.label_weights.detach().clone(),
                    "attention": model.score.key.weight.detach().clone(),
                    "backbone": model.model.embeddings.word_embeddings.weight.detach().clone(),
                }
            )

    initial = {
        "head": model.score.label_weights.detach().clone(),
        "attention": model.score.key.weight.detach().clone(),
        "backbone": model.model.embeddings.word_embeddings.weight.detach().clone(),
    }
    trainer = PlantTrainer(
        model=model,
        args=args,
        train_dataset=data.select_columns(["input_ids", "label_ids"]),
        data_collator=PlantDataCollator(3, tokenizer.pad_token_id),
        callbacks=[GradualUnfreezing({"attention": 1, "backbone": 2}), Record()],
    )
    trainer.create_optimizer()
    rates = sorted({group["lr"] for group in trainer.optimizer.param_groups})
    assert rates == [1e-3, 2.5e-3, 1e-2]
    trainer.train()
    states = [initial, *snapshots]
    changed = [{part: not torch.equal(states[e][part], states[e + 1][part]) for part in initial} for e in range(3)]
    assert changed == [
        {"head": True, "attention": False, "backbone": False},
        {"head": True, "attention": True, "backbone": False},
        {"head": True, "attention": True, "backbone": True},
    ]


def test_a_label_in_every_training_document_trains_with_finite_losses(workspace, tmp_path, caplog):
    corpus = tmp_path / "corpus"
    write_synthetic_corpus(corpus, {"train": 60, "dev": 20, "test": 20}, num_labels=6, length=(20, 40))
    records = [json.loads(line) for line in (corpus / "train.jsonl").read_text().splitlines()]
    (corpus / "train.jsonl").write_text(
        "".join(json.dumps({**r, "labels": [*r["labels"], "ALL"]}) + "\n" for r in records)
    )
    plant_arguments, training = arguments(workspace, tmp_path / "run", training={"logging_steps": 1})
    plant_arguments.data = str(corpus)
    with caplog.at_level("WARNING", logger="plant_hf"):
        fit(plant_arguments, training)
    assert "1 of 7 labels have no evidence token in the MIG table (e.g. 'ALL')" in caplog.text
    history = json.loads(next((tmp_path / "run" / "checkpoints").glob("checkpoint-*/trainer_state.json")).read_text())
    losses = [entry.get("loss", entry.get("eval_loss")) for entry in history["log_history"]]
    assert all(math.isfinite(loss) for loss in losses if loss is not None)


def test_a_corpus_edited_in_place_is_not_taken_for_the_one_a_run_read(workspace, tmp_path):
    corpus = tmp_path / "corpus"
    write_synthetic_corpus(corpus, {"train": 60, "dev": 20, "test": 20}, num_labels=6, length=(20, 40))
    run = tmp_path / "run"
    plant_arguments, training = arguments(workspace, run, planting="none", training={"num_train_epochs": 1})
    plant_arguments.data = str(corpus)
    fit(plant_arguments, training)
    report = (run / "eval" / "test_metrics.json").read_text()
    fit(plant_arguments, training)  # the same corpus: every stage is skipped
    lines = (corpus / "train.jsonl").read_text().splitlines()
    (corpus / "train.jsonl").write_text("\n".join(lines[:-1]) + "\n")  # one document fewer, same file times aside
    with pytest.raises(ValueError, match=r"is not the corpus that the run in .* read: its documents have changed"):
        fit(plant_arguments, training)
    assert (run / "eval" / "test_metrics.json").read_text() == report


@pytest.mark.parametrize(
    ("plant", "training", "message"),
    [
        ({"max_chunks": 0}, {}, "--max_chunks 0: it must be at least 1"),
        ({"chunk_size": 2}, {}, "--chunk_size 2: it must be at least 4"),
        ({"chunk_size": 4096}, {}, r"--chunk_size 4096: .* reads at most 256 positions"),
        ({"eval_top_k": 0}, {}, "--eval_top_k 0: it must be at least 1"),
        ({"mig_top_k": 0}, {}, "--mig_top_k 0"),
        ({"lora_r": 0}, {}, "--lora_r 0"),
        ({"threshold": 1.5}, {}, r"--threshold 1.5: a probability, in \[0, 1\]"),
        ({"dtype": "float17"}, {}, "--dtype float17: choose one of auto, float32, bfloat16, float16"),
        ({"planting": "deep"}, {}, "--planting deep: choose one of contextual, static, both, none"),
        ({}, {"metric_for_best_model": "P@7"}, "--metric_for_best_model P@7: the dev evaluation reports loss, P@1"),
        ({}, {"unfreeze_schedule": "head=x"}, "Bad unfreeze schedule item 'head=x'"),
        ({"fusion_metric": "ndcg"}, {}, "--fusion_metric ndcg: the dev evaluation reports P@1"),
        ({"lexical_ngrams": 0}, {}, "--lexical_ngrams 0: it must be at least 1"),
        ({"max_chunks": 0, "eval_top_k": 0}, {}, "--max_chunks 0: .*; --eval_top_k 0"),  # all at once
    ],
)
def test_options_that_cannot_work_are_refused_before_anything_is_written(workspace, tmp_path, plant, training, message):
    run = tmp_path / "run"
    plant_arguments, training_arguments = arguments(workspace, run, training=training)
    with pytest.raises(ValueError, match=message):
        fit(dataclasses.replace(plant_arguments, **plant), training_arguments)
    assert not run.exists()


def test_bad_requests_fail_before_any_work(workspace, tmp_path, monkeypatch):
    run = tmp_path / "run"
    with pytest.raises(ValueError, match=r"no linear layer named \['nowhere'\]"):
        fit(*arguments(workspace, run, backbone_mode="lora", lora_target_modules=["nowhere"]))
    assert not (run / "mig").exists()
    monkeypatch.setattr("plant_hf.recipe.data.is_bitsandbytes_available", lambda: False)
    with pytest.raises(ValueError, match="--backbone_mode qlora needs bitsandbytes"):
        fit(*arguments(workspace, tmp_path / "q", backbone_mode="qlora"))
    monkeypatch.undo()
    unlabelled = tmp_path / "unlabelled"
    unlabelled.mkdir()
    (unlabelled / "train.jsonl").write_text("".join(f'{{"id": "{i}", "text": "w5 w6", "labels": []}}\n' for i in "abc"))
    plant_arguments, training = arguments(workspace, tmp_path / "u")
    plant_arguments.data = str(unlabelled)
    with pytest.raises(DataFormatError, match="has no labels at all"):
        fit(plant_arguments, training)
    fit(*arguments(workspace, tmp_path / "r", planting="none", training={"num_train_epochs": 1}))
    with pytest.raises(ValueError, match=r"holds a run with other settings \(learning_rate: 0.002 -> 0.01"):
        fit(
            *arguments(
                workspace, tmp_path / "r", planting="none", training={"num_train_epochs": 1, "learning_rate": 1e-2}
            )
        )
    # A run recorded before a setting existed held its default: the same request continues, another is refused.
    recorded = tmp_path / "r" / "run_config.json"
    settings = json.loads(recorded.read_text())
    assert not {"hub_strategy", "hub_private_repo", "project", "trackio_space_id"} & settings.keys()  # Hub, trackers
    fit(*arguments(workspace, tmp_path / "r", planting="none", training={"num_train_epochs": 1, "hub_strategy": "end"}))
    del settings["label_value_dim"]
    recorded.write_text(json.dumps(settings))
    fit(*arguments(workspace, tmp_path / "r", planting="none", training={"num_train_epochs": 1}))
    with pytest.raises(ValueError, match=r"other settings \(label_value_dim: None -> 8\)"):
        fit(*arguments(workspace, tmp_path / "r", planting="none", label_value_dim=8, training={"num_train_epochs": 1}))
    with pytest.raises(ValueError, match=r"train_fraction must be in \(0, 1\]"):
        arguments(workspace, tmp_path / "f", train_fraction=0.0)


def test_train_fraction_is_a_seeded_subset_of_the_training_split(workspace, tmp_path):
    def training_ids(fraction, seed):
        context = prepare_run(*arguments(workspace, tmp_path / f"{fraction}-{seed}", train_fraction=fraction,
                                         training={"seed": seed}))  # fmt: skip
        return context.splits["train"]["id"], context.vocabulary

    whole, _ = training_ids(1.0, 0)
    quarter, vocabulary = training_ids(0.25, 0)
    assert len(whole) == 160 and len(quarter) == 40 and set(quarter) < set(whole)
    assert training_ids(0.25, 0)[0] == quarter and training_ids(0.25, 1)[0] != quarter
    assert vocabulary.num_documents == 40


def cli_fit(workspace, run, *extra, launcher=(sys.executable,)):
    """The training script's command line for a small run on the tiny BERT."""
    options = {
        "--data": workspace / "corpus", "--backbone": workspace / "bert", "--output_dir": run, "--chunk_size": 32,
        "--max_chunks": 2, "--mig_top_k": 16, "--ranker_epochs": 1, "--use_cpu": True, "--disable_tqdm": True,
        "--seed": 0,
    }  # fmt: skip
    script = ROOT / "training_scripts" / "train_plant.py"
    return [*launcher, str(script), *(str(part) for pair in options.items() for part in pair), *extra]


def test_killed_run_resumes_to_the_same_weights(workspace, tmp_path):
    steps = [
        "--num_train_epochs",
        "3",
        "--per_device_train_batch_size",
        "8",
        "--save_strategy",
        "steps",
        "--save_steps",
        "4",
        "--eval_strategy",
        "steps",
        "--eval_steps",
        "4",
        "--save_total_limit",
        "100",
        "--early_stopping_patience",
        "100",
    ]
    uninterrupted = tmp_path / "whole"
    subprocess.run(cli_fit(workspace, uninterrupted, *steps), check=True, capture_output=True, timeout=600)
    killed = tmp_path / "killed"
    process = subprocess.Popen(cli_fit(workspace, killed, *steps), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not list((killed / "checkpoints").glob("checkpoint-32")) and time.time() < deadline:
        time.sleep(0.2)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (killed / "model").exists()
    # whenever the kill came, the run is made to have died while writing step 28's checkpoint: it must resume from
    # step 24, inside its second epoch (20 steps each), where the batches' order comes from a sampler mid-epoch
    for checkpoint in (killed / "checkpoints").glob("checkpoint-*"):
        if int(checkpoint.name.split("-")[1]) > 28:
            shutil.rmtree(checkpoint)
    (killed / "checkpoints" / "checkpoint-28" / "trainer_state.json").unlink()
    refused = subprocess.run(cli_fit(workspace, killed, *steps), capture_output=True, text=True, timeout=600)
    assert refused.returncode == 2 and "interrupted fine-tuning (checkpoint-24)" in refused.stderr
    assert "pass --resume to continue it" in refused.stderr
    resumed_run = subprocess.run(
        cli_fit(workspace, killed, *steps, "--resume"), check=True, capture_output=True, text=True, timeout=600
    )
    assert "removing checkpoint-28" in resumed_run.stdout
    whole = load_file(str(uninterrupted / "model" / "model.safetensors"))
    resumed = load_file(str(killed / "model" / "model.safetensors"))
    assert whole.keys() == resumed.keys()
    for name in whole:
        torch.testing.assert_close(resumed[name], whole[name], rtol=0, atol=1e-6, msg=name)


def test_a_failure_during_the_final_save_leaves_no_model_and_a_rerun_finishes(workspace, tmp_path, monkeypatch):
    run = tmp_path / "run"
    options = {"planting": "none", "training": {"num_train_epochs": 2, "early_stopping_patience": None}}
    real_save = PlantForMultiLabelClassification.save_pretrained

    def save_config_then_fail(self, folder, **kwargs):
        self.config.save_pretrained(folder)  # transformers writes the config before the weights
        raise OSError("disk full")

    monkeypatch.setattr(PlantForMultiLabelClassification, "save_pretrained", save_config_then_fail)
    with pytest.raises(OSError, match="disk full"):
        fit(*arguments(workspace, run, **options))
    assert not (run / "model").exists() and not (run / "model.partial").exists()
    monkeypatch.setattr(PlantForMultiLabelClassification, "save_pretrained", real_save)
    plant_arguments, training = arguments(workspace, run, **options)
    plant_arguments.resume = True
    report = fit(plant_arguments, training)
    assert (run / "model" / "model.safetensors").exists() and report["P@1"] >= 0
    assert json.loads((run / "finetuning_summary.json").read_text())["epochs"] == 2


def test_two_process_run_matches_the_single_process_loss_curve(workspace, tmp_path):
    # Random batches: the length-grouped samplers of one and two processes draw different batches.
    common = "--num_train_epochs 2 --logging_steps 1 --planting none --eval_strategy no --save_strategy epoch"
    common += " --train_sampling_strategy random"
    common = [*common.split(), "--load_best_model_at_end", "False"]
    single = tmp_path / "single"
    batch_of_16 = ["--per_device_train_batch_size", "16"]
    subprocess.run(cli_fit(workspace, single, *common, *batch_of_16), check=True, capture_output=True, timeout=600)
    double = tmp_path / "double"
    launcher = (sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533")
    two_batches_of_8 = ["--per_device_train_batch_size", "8", "--ddp_backend", "gloo"]
    result = subprocess.run(
        cli_fit(workspace, double, *common, *two_batches_of_8, launcher=launcher),
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    one, two = logged_losses(single), logged_losses(double)
    assert len(one) == len(two) > 5
    torch.testing.assert_close(torch.tensor(two), torch.tensor(one), rtol=2e-3, atol=2e-4)


def test_two_processes_build_one_label_tree_and_train_the_shortlisting_model(workspace, tmp_path):
    # Eight labels in leaves of two and a beam of ten: every step reads every row of the label tables, where lazy
    # SparseAdam steps as Adam does. Two processes with sparse tables (their gradients averaged by PlantTrainer) must
    # then give the loss curve of one process with dense tables on the same global batches: the shortlisted loss is
    # a mean over documents, whatever number of labels each scores, so equal shares of a batch average to it.
    options = "--planting none --num_train_epochs 2 --memory false --lexical false --label_tree on"
    options += " --shortlist_min_labels 1 --label_tree_arity 2 --label_tree_leaf_size 2 --shortlist_negatives 0"
    options += " --logging_steps 1 --eval_strategy no --save_strategy epoch --load_best_model_at_end False"
    options = [*options.split(), "--train_sampling_strategy", "random"]
    single = tmp_path / "single-dense"
    dense = ["--sparse_label_gradients", "false", "--per_device_train_batch_size", "16"]
    subprocess.run(cli_fit(workspace, single, *options, *dense), check=True, capture_output=True, timeout=600)
    double = tmp_path / "double-sparse"
    launcher = (sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29534")
    sparse = ["--sparse_label_gradients", "true", "--per_device_train_batch_size", "8", "--ddp_backend", "gloo"]
    result = subprocess.run(
        cli_fit(workspace, double, *options, *sparse, launcher=launcher), capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "label tables: sparse gradients and SparseAdam (2 tables, averaged over 2 processes)" in result.stdout
    one, two = logged_losses(single), logged_losses(double)
    assert len(one) == len(two) > 5
    torch.testing.assert_close(torch.tensor(two), torch.tensor(one), rtol=2e-3, atol=2e-4)
    assert (double / "label_tree" / "label_tree.safetensors").exists()
    model = PlantForMultiLabelClassification.from_pretrained(double / "model")
    assert model.shortlisting and model.config.label_tree_leaf_size == 2
    assert json.loads((double / "eval" / "test_metrics.json").read_text())["label_tree"]["recall"] > 0


@pytest.mark.parametrize("name", ["single_gpu", "multi_gpu_ddp", "fsdp", "deepspeed_zero3"])
def test_shipped_accelerate_configs_load(name):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(ROOT / "training_scripts" / "accelerate" / f"{name}.yaml"))
    expected = {"single_gpu": "NO", "multi_gpu_ddp": "MULTI_GPU", "fsdp": "FSDP", "deepspeed_zero3": "DEEPSPEED"}
    assert config.distributed_type.value == expected[name]
    if name == "deepspeed_zero3":
        assert config.deepspeed_config["zero_stage"] == 3


@pytest.mark.parametrize("family", ["llama", "mistral", "phi3", "bert"])
def test_fsdp_wraps_each_backbone_layer(family):
    from accelerate.utils.dataclasses import get_module_class_from_name

    model = tiny_model(family)
    layers = [get_module_class_from_name(model, name) for name in model._no_split_modules]
    assert layers and all(layer is not None for layer in layers)
    units = sum(isinstance(module, tuple(layers)) for module in model.modules())
    assert units >= model.config.text_config.num_hidden_layers  # a unit per layer at least (BERT: + embeddings)


def test_options_come_from_a_yaml_or_json_file(tmp_path):
    from plant_hf.cli import parse_command

    options = {
        "data": "corpus",
        "backbone_mode": "lora",
        "lora_r": 8,
        "output_dir": str(tmp_path / "run"),
        "learning_rate": 0.005,
        "unfreeze_schedule": "attention=1",
        "use_cpu": True,
    }
    (tmp_path / "run.yaml").write_text("\n".join(f"{key}: {value}" for key, value in options.items()))
    (tmp_path / "run.json").write_text(json.dumps(options))
    for name in ("run.yaml", "run.json"):
        command, (plant_arguments, training) = parse_command(["fit", str(tmp_path / name)])
        assert command == "fit"
        assert (plant_arguments.data, plant_arguments.backbone_mode, plant_arguments.lora_r) == ("corpus", "lora", 8)
        assert (training.learning_rate, training.unfreeze_schedule) == (0.005, "attention=1")
        assert training.planted_lr_fraction == 0.5 and training.metric_for_best_model == "P@5"


def test_the_console_tells_the_stages_an_epoch_a_line_and_what_to_run_next(workspace, tmp_path):
    """What `plant-hf fit` shows on its built-in demo corpus: a header per stage, one line per evaluated epoch
    instead of Trainer's dicts, bars named after their stage, no backend noise, and where the outputs are with the
    commands that use them."""
    run = tmp_path / "run"
    options = {
        "--data": "synthetic", "--synthetic_documents": 160, "--backbone": workspace / "bert", "--output_dir": run,
        "--chunk_size": 32, "--max_chunks": 2, "--mig_top_k": 16, "--use_cpu": True, "--seed": 0,
        "--num_train_epochs": 2, "--ranker_epochs": 2,
    }  # fmt: skip
    command = [sys.executable, "-m", "plant_hf.cli", "fit", *(str(part) for pair in options.items() for part in pair)]
    shown = subprocess.run(command, capture_output=True, text=True, timeout=600, check=True)
    transcript = shown.stdout + shown.stderr
    bars = {line.split(":")[0].strip() for line in re.split(r"[\r\n]", shown.stderr) if re.search(r"\d+/\d+ \[", line)}
    assert {"ranker", "fine-tuning"} <= bars and not any(bar.isdigit() or not bar for bar in bars), bars
    headers = [line for line in transcript.splitlines() if line.startswith("── ")]
    stages = ["data", "MIG table", "ranker", "fine-tuning", "retrieval memory", "lexical channel", "evaluation"]
    assert headers == [f"── {stage}" for stage in stages]
    epochs = re.findall(r"^fine-tuning epoch (\d+)/2: dev P@5 \d+\.\d\d", transcript, flags=re.M)
    assert epochs == ["1", "2"] and len(re.findall(r"^ranker epoch \d/2: dev ndcg", transcript, flags=re.M)) == 2
    assert re.search(r"^ranker before training: dev ndcg \d+\.\d\d$", transcript, flags=re.M)
    assert "{'" not in transcript and "gemm_4bit" not in transcript and "LOAD REPORT" not in transcript
    assert f"plant-hf predict --model {run / 'model'} --input docs.jsonl" in transcript
