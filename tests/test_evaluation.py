"""The metrics as an `evaluate` module, as Trainer's compute_metrics, and through `plant-hf evaluate`."""

import json
import subprocess
import sys

import evaluate
import numpy as np
import pytest
import torch
from datasets import Dataset
from transformers import Trainer, TrainingArguments

from plant_hf.data import LabelVocabulary, PlantDataCollator, tokenize_split, write_predictions
from plant_hf.metrics import EVALUATE_MODULE_PATH, TopKPredictions, evaluate_predictions
from plant_hf.training import XMCComputeMetrics, format_metrics_table, top_k_logits

from conftest import tiny_model


def test_evaluate_module_loads_from_a_local_path_and_agrees():
    module = evaluate.load(EVALUATE_MODULE_PATH)
    predictions, scores = [[2, 0, 1], [1, 0]], [[0.9, 0.2, 0.1], [0.8, 0.6]]
    references = [[2, 3], [0, 1]]  # label 3 was never seen in training
    result = module.compute(
        predictions=predictions,
        scores=scores,
        references=references,
        num_labels=3,
        label_counts=[4, 1, 9],
        num_train_documents=10,
        ks=[1, 2],
    )
    indices = np.array([[2, 0, 1], [1, 0, -1]])
    values = np.array([[0.9, 0.2, 0.1], [0.8, 0.6, -np.inf]])
    expected = evaluate_predictions(references, TopKPredictions(indices, values, 3), [4, 1, 9], 10, ks=(1, 2))
    assert result["P@1"] == 1.0 and result["R@2"] == pytest.approx((0.5 + 1.0) / 2)
    assert result.keys() == expected.keys()
    for name in ("P@2", "nDCG@2", "PSP@2", "micro_f1", "macro_f1_harmonic", "micro_auc"):
        assert result[name] == pytest.approx(expected[name])


def test_trainer_compute_metrics_counts_unseen_labels(tmp_path, tokenizer):
    train = [["X"], ["Y"], ["X", "Y"], ["Z"]]
    vocabulary = LabelVocabulary.from_training(train)
    eval_split = Dataset.from_dict(
        {"id": ["a", "b", "c"], "text": ["w5 w6 w7", "w8", "w9 w10"], "labels": [["X", "NEW"], ["Y"], ["Z", "X"]]}
    )
    tokenized, _ = tokenize_split(eval_split, tokenizer, vocabulary, chunk_size=4, split="dev")
    model = tiny_model("llama", num_labels=len(vocabulary), chunk_size=4)
    compute = XMCComputeMetrics.for_split(vocabulary, eval_split["labels"], ks=(1, 2), metrics="all")
    trainer = Trainer(
        model=model,
        args=TrainingArguments(output_dir=str(tmp_path), per_device_eval_batch_size=2, report_to=[], use_cpu=True),
        eval_dataset=tokenized,
        data_collator=PlantDataCollator(len(vocabulary), tokenizer.pad_token_id),
        compute_metrics=compute,
        preprocess_logits_for_metrics=top_k_logits(2),
    )
    metrics = trainer.evaluate()
    batch = PlantDataCollator(len(vocabulary), tokenizer.pad_token_id)(list(tokenized))
    with torch.no_grad():
        probabilities = model(**batch).logits.sigmoid().numpy()
    direct = evaluate_predictions(
        compute.truth, TopKPredictions.from_scores(probabilities, 2), vocabulary.counts, 4, ks=(1, 2)
    )
    assert compute.truth.shape == (3, 4)  # 3 training labels and the unseen NEW
    for name in ("P@1", "R@2", "nDCG@2", "PSP@2", "micro_f1"):
        assert metrics[f"eval_{name}"] == pytest.approx(direct[name], abs=1e-6)
    assert direct["R@2"] < 1.0 and "eval_freq_0_R@2" in metrics
    assert "eval_loss" in metrics
    # by default Trainer logs the headline metrics only; without top_k_logits it is told what to pass
    compute.metrics = None
    headline = {key.removeprefix("eval_") for key in trainer.evaluate() if key.startswith("eval_")}
    assert headline - {"loss", "runtime", "samples_per_second", "steps_per_second", "model_preparation_time"} == {
        "P@1", "P@2", "nDCG@1", "nDCG@2", "PSP@1", "PSP@2", "R@2", "micro_f1", "macro_f1", "macro_auc",
        "freq_0_PSP@2", "freq_1-5_PSP@2",  # the other buckets hold no label of this tiny set
    }  # fmt: skip
    trainer.preprocess_logits_for_metrics = None
    with pytest.raises(ValueError, match=r"pass preprocess_logits_for_metrics=plant_hf.training.top_k_logits\(k\)"):
        trainer.evaluate()


@pytest.fixture
def corpus(tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    train = [{"id": f"t{i}", "text": "w5 w6", "labels": labels} for i, labels in enumerate([["A", "B"], ["A"], ["C"]])]
    test = [{"id": "q1", "text": "w7", "labels": ["A", "C"]}, {"id": "q2", "text": "w8", "labels": ["B", "NEW"]}]
    for name, records in (("train", train), ("test", test)):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


def run_cli(*arguments):
    return subprocess.run(
        [sys.executable, "-m", "plant_hf.cli", *arguments], capture_output=True, text=True, timeout=120
    )


def test_cli_evaluate_writes_report_and_plot(tmp_path, corpus):
    predictions = tmp_path / "preds.jsonl"
    # q1: A (hit), B (miss); q2: B (hit), A (miss)
    write_predictions(predictions, ["q1", "q2"], [["A", "B"], ["B", "A"]], [[0.9, 0.4], [0.7, 0.6]])
    result = run_cli("evaluate", "--predictions", str(predictions), "--data", str(corpus), "--ks", "1", "2")
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "preds.metrics.json").read_text())
    assert report["P@1"] == 1.0 and report["P@2"] == 0.5
    assert report["R@2"] == pytest.approx((1 / 2 + 1 / 2) / 2)
    # at 0.5: q1 predicts A (tp); q2 predicts B (tp) and A (fp); misses: C, NEW
    assert report["micro_precision"] == pytest.approx(2 / 3) and report["micro_recall"] == pytest.approx(2 / 4)
    assert report["by_frequency"]["0"]["labels"] == 1 and report["by_frequency"]["1-5"]["labels"] == 3
    assert "1 labels unseen in training" in report["meta"]["unseen_labels"]
    assert (tmp_path / "preds.buckets.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "P@1" in result.stdout and "100.00" in result.stdout


def test_cli_evaluate_refuses_predictions_of_other_documents(tmp_path, corpus):
    predictions = tmp_path / "preds.jsonl"
    write_predictions(predictions, ["q1", "zzz"], [["A"], ["B"]], [[0.9], [0.7]])
    result = run_cli("evaluate", "--predictions", str(predictions), "--data", str(corpus))
    assert result.returncode == 2
    assert "1 documents without a prediction (e.g. ['q2'])" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_help_explains_every_argument():
    result = run_cli("evaluate", "--help")
    assert result.returncode == 0 and "--predictions" in result.stdout and "Jain et al." in result.stdout


def test_metrics_table_lists_buckets():
    report = {"documents": 2, "labels": 3, "P@1": 0.5, "by_frequency": {"0": {"documents": 1, "labels": 1, "P@1": 0.0}}}
    table = format_metrics_table(report)
    assert table.splitlines()[0].split() == ["metric", "all", "freq", "0"]
    assert "50.00" in table and "0.00" in table


class VaryingDocuments(torch.utils.data.Dataset):
    """Cached-state documents of lengths 3 to 11, shortest first, as `CachedDocuments` serves them."""

    def __init__(self, count: int = 9, hidden: int = 32):
        generator = torch.Generator().manual_seed(0)
        self.items = [
            {"token_states": torch.randn(3 + i, hidden, generator=generator), "input_ids": torch.arange(3 + i)}
            for i in range(count)
        ]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        return self.items[index]

    def lengths(self) -> np.ndarray:
        return np.array([len(item["input_ids"]) for item in self.items])


def test_trainer_reads_the_longest_documents_first_and_answers_in_the_splits_order(tmp_path):
    from plant_hf.cache import CachedDocumentCollator
    from plant_hf.training.trainer import XMCTrainer

    model, documents = tiny_model("bert", num_labels=5), VaryingDocuments()
    padded_lengths = []

    def collate(features):
        batch = CachedDocumentCollator()(features)
        padded_lengths.append(batch["attention_mask"].shape[1])
        return batch

    arguments = TrainingArguments(output_dir=str(tmp_path), per_device_eval_batch_size=4, use_cpu=True, report_to=[])
    trainer = XMCTrainer(
        model=model, args=arguments, data_collator=collate, preprocess_logits_for_metrics=top_k_logits(3)
    )
    indices, scores = trainer.predict(documents).predictions
    assert padded_lengths == [11, 7, 3]  # longest first; in the split's order the batches would pad to 6, 10, 11
    with torch.no_grad():
        for row, document in enumerate(documents):
            alone = model(**CachedDocumentCollator()([document])).logits.sigmoid()[0]
            np.testing.assert_array_equal(indices[row], alone.topk(3).indices.numpy())
            np.testing.assert_allclose(scores[row], alone.topk(3).values.numpy(), rtol=1e-5)


def test_bucket_plot_names_empty_buckets_instead_of_drawing_zeros():
    import math

    from plant_hf.training.evaluation import bucket_figure

    scores = {"P@1": 0.8, "P@5": 0.4, "micro_f1": 0.5}
    report = {**scores, "by_frequency": {
        "0": {"labels": 3, "documents": 2, "P@1": 0.0, "P@5": 0.0, "micro_f1": 0.0},
        "1-5": {"labels": 0, "documents": 0},
        "6-50": {"labels": 4, "documents": 9, **scores},
        ">50": {"labels": 2, "documents": 30, **scores},
    }}  # fmt: skip
    figure = bucket_figure(report, ("P@1", "P@5", "micro_f1"))
    axis = figure.axes[0]
    heights = [bar.get_height() for bar in axis.patches]  # metric by metric, each over the five groups
    assert len(heights) == 15
    drawn = [[not math.isnan(heights[5 * metric + group]) for group in range(5)] for metric in range(3)]
    assert drawn == [[True, False, False, True, True]] * 3
    notes = [text.get_text() for text in axis.texts if "\n" in text.get_text()]
    assert notes == ["labels unseen\nin training:\nnever predicted", "no test document\nhas these labels"]
    report["by_frequency"]["0"] = {"labels": 0, "documents": 0}  # no unseen label in the test split: nothing to say
    notes = [text.get_text() for text in bucket_figure(report, ("P@1",)).axes[0].texts if "\n" in text.get_text()]
    assert notes == ["no test document\nhas these labels"] * 2
    assert axis.get_legend() is None and [t.get_text() for t in figure.legends[0].get_texts()] == [
        "P@1", "P@5", "micro-F1"
    ]  # fmt: skip
