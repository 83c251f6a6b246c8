"""Training length: fine-tuning and the ranker train until their dev metric stops improving, keep the best epoch,
say why they stopped, and a resumed run stops where an uninterrupted one does."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from plant_hf.recipe import PlantArguments, fit
from plant_hf.training.trainer import PlantTrainer, PlantTrainingArguments, training_summary

from conftest import synthetic_workspace, tiny_model


class ScriptedMetric:
    """`compute_metrics` returning a dev P@5 from a script, one value per evaluation."""

    def __init__(self, values):
        self.values = list(values)
        self.calls = 0

    def __call__(self, prediction):
        value = self.values[min(self.calls, len(self.values) - 1)]
        self.calls += 1
        return {"P@5": value}


def test_early_stopping_stops_on_a_plateau_and_keeps_the_best_checkpoint(tmp_path):
    from plant_hf.cache import CachedDocumentCollator

    model = tiny_model("bert", num_labels=3).train()
    generator = torch.Generator().manual_seed(0)
    documents = [
        {"token_states": torch.randn(6, 32, generator=generator), "input_ids": torch.arange(6), "label_ids": [i % 3]}
        for i in range(16)
    ]
    # Epoch 3 gains less than the threshold (1e-3) over epoch 2, epochs 4 and 5 fall: three evaluations without an
    # improvement, so training stops after epoch 5; the best checkpoint is still the highest value (epoch 3).
    metric = ScriptedMetric([0.20, 0.50, 0.5004, 0.45, 0.30, 0.90, 0.95])
    args = PlantTrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=8, use_cpu=True, disable_tqdm=True, save_total_limit=None
    )
    assert (args.num_train_epochs, args.early_stopping_patience, args.lr_scheduler_type) == (
        100.0,
        3,
        "constant_with_warmup",
    )
    trainer = PlantTrainer(
        model=model,
        args=args,
        train_dataset=documents,
        eval_dataset=documents[:4],
        data_collator=CachedDocumentCollator(num_labels=3),
        compute_metrics=metric,
        callbacks=args.stopping_callbacks(),
    )
    trainer.train()
    summary = training_summary(trainer)
    assert metric.calls == 5 and summary["epochs"] == 5.0
    assert summary["best_epoch"] == 3.0 and summary["best_dev_P@5"] == 0.5004
    assert summary["stopped"] == "early stopping: dev P@5 did not improve by more than 0.001 for 3 evaluations"
    assert summary["dev_P@5_by_epoch"] == [0.2, 0.5, 0.5004, 0.45, 0.3]
    best = load_file(str(Path(trainer.state.best_model_checkpoint) / "model.safetensors"))
    assert trainer.state.best_model_checkpoint.endswith("checkpoint-6")  # 2 steps an epoch
    last = load_file(str(tmp_path / "checkpoint-10" / "model.safetensors"))
    weights = model.score.label_weights.detach()
    torch.testing.assert_close(weights, best["score.label_weights"], rtol=0, atol=0)
    assert not torch.equal(weights, last["score.label_weights"])


def test_without_evaluation_training_runs_to_its_ceiling(tmp_path):
    args = PlantTrainingArguments(output_dir=str(tmp_path), eval_strategy="no", load_best_model_at_end=False)
    assert args.stopping_callbacks() == []
    assert PlantTrainingArguments(output_dir=str(tmp_path), early_stopping_patience=None).stopping_callbacks() == []


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    sizes = {"train": 120, "dev": 30, "test": 30}
    return synthetic_workspace(tmp_path_factory.mktemp("length"), sizes, num_labels=6, length=(20, 40))


def run_arguments(root: Path, run: Path, **training):
    plant = PlantArguments(
        data=str(root / "corpus"), backbone=str(root / "bert"), chunk_size=32, max_chunks=2, mig_top_k=16
    )
    # No change of dev P@5 can clear a threshold of 0.99: a plateau from the first evaluation, on real training.
    options = {"num_train_epochs": 10, "early_stopping_patience": 2, "early_stopping_threshold": 0.99,
               "per_device_train_batch_size": 16, "save_total_limit": None, "seed": 0, **training}  # fmt: skip
    return plant, PlantTrainingArguments(output_dir=str(run), use_cpu=True, disable_tqdm=True, **options)


def test_a_resumed_run_stops_where_an_uninterrupted_one_does(corpus, tmp_path):
    whole = tmp_path / "whole"
    report = fit(*run_arguments(corpus, whole))
    stages = json.loads((whole / "model" / "plant_training.json").read_text())["stages"]
    curve = stages["fine-tuning"]["dev_P@5_by_epoch"]
    assert stages["fine-tuning"]["epochs"] == 3.0 and len(curve) == 3
    assert stages["fine-tuning"]["best_epoch"] == 1 + curve.index(max(curve))
    assert stages["fine-tuning"]["stopped"].startswith("early stopping: dev P@5 did not improve")
    ranker = stages["ranker"]
    assert ranker["epochs"] <= 30 and ranker["stopped"] and len(ranker["dev_ndcg_by_epoch"]) == ranker["epochs"]
    card = (whole / "model" / "README.md").read_text()
    minutes = f"{stages['fine-tuning']['seconds'] / 60:.1f}"
    assert f"| fine-tuning | 3.0 | {stages['fine-tuning']['best_epoch']} | {minutes} | early stopping" in card
    # The same run, stopped after its second epoch (its later checkpoints and outputs never written), resumed.
    cut = tmp_path / "cut"
    shutil.copytree(whole, cut)
    for name in ("model", "eval", "finetuning_summary.json"):
        path = cut / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    checkpoints = sorted((cut / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    assert len(checkpoints) == 3
    shutil.rmtree(checkpoints[-1])
    for path in checkpoints[0:2]:  # checkpoints name the folder they were written in
        state = json.loads((path / "trainer_state.json").read_text())
        state["best_model_checkpoint"] = state["best_model_checkpoint"].replace(str(whole), str(cut))
        (path / "trainer_state.json").write_text(json.dumps(state))
    plant, training = run_arguments(corpus, cut)
    plant.resume = True
    resumed = fit(plant, training)
    again = json.loads((cut / "model" / "plant_training.json").read_text())["stages"]["fine-tuning"]
    # Only the resumed part is timed; on a fast machine that one epoch can round to 0.0 s.
    assert again.pop("seconds") >= 0 and again == {k: v for k, v in stages["fine-tuning"].items() if k != "seconds"}
    assert (resumed["P@5"], resumed["PSP@5"]) == (report["P@5"], report["PSP@5"])
    torch.testing.assert_close(
        load_file(str(cut / "model" / "model.safetensors")), load_file(str(whole / "model" / "model.safetensors"))
    )


def test_training_batches_group_lengths_and_evaluation_keeps_the_split_order(tmp_path):
    from plant_hf.cache import CachedDocumentCollator

    lengths = [3 + (7 * i) % 61 for i in range(640)]
    documents = [
        {"token_states": torch.full((n, 32), float(i)), "input_ids": torch.arange(n), "label_ids": [i % 3]}
        for i, n in enumerate(lengths)
    ]

    def trainer(**options) -> PlantTrainer:
        args = PlantTrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=8, use_cpu=True, **options)
        return PlantTrainer(model=tiny_model("bert", num_labels=3), args=args, train_dataset=documents,
                            eval_dataset=documents, data_collator=CachedDocumentCollator(num_labels=3))  # fmt: skip

    grouped = trainer()
    seen = [int(i) for batch in grouped.get_eval_dataloader() for i in batch["token_states"][:, 0, 0]]
    assert seen == list(range(640))  # compute_metrics matches predictions to documents by position

    def padded_tokens(trainer: PlantTrainer) -> int:
        return sum(batch["attention_mask"].numel() for batch in trainer.get_train_dataloader())

    assert padded_tokens(grouped) < 0.6 * padded_tokens(trainer(train_sampling_strategy="random"))
