"""Labels never seen in training, scored from their descriptions: hold out a share of a corpus's labels from the
training targets (their documents stay, the label is removed from them), give every label's name as its description
(`plant-hf fit --label_descriptions`), train with fit's defaults, and score the test predictions on the held-out
labels.

    python benchmarks/unseen_labels.py --data ../shared/data/us_bills_110_crs_summary --work /tmp/plant-unseen --bf16

The derived corpus (training labels without the held-out ones; dev and test as they are) and the catalogue are
written under `<work>/<dataset>`, the run beside them (`run/`, resumable: run the same command again). On the test
documents that carry a held-out label: P@5 and R@5 of the held-out labels among all predictions (a hit is a held-out
label of the document in its top 5), and among the held-out labels alone (the predictions restricted to them), with
the description scores and without them (the model's `memory_description_weight` set to 0: what a model without a
catalogue predicts, nothing for these labels); and the usual report over all labels. Writes `unseen_labels.json` and
`unseen_labels.md` in `<work>/<dataset>`.
"""

import argparse
import gzip
import json
from pathlib import Path

import numpy as np
import torch
from transformers import pipeline

import plant_hf  # noqa: F401  (registers the pipeline)
from plant_hf.data import load_corpus
from plant_hf.files import write_json
from plant_hf.modeling_plant import PlantForMultiLabelClassification
from plant_hf.recipe import PlantArguments, fit
from plant_hf.training.trainer import PlantTrainingArguments


def derived_corpus(data: Path, folder: Path, share: float, seed: int) -> tuple[list[str], Path]:
    """Write the corpus with a `share` of its training labels taken off the training documents, and a catalogue
    naming every label; returns the held-out labels and the catalogue's path."""
    corpus = load_corpus(str(data))
    labels = sorted({label for row in corpus.splits["train"]["labels"] for label in row})
    held_out = sorted(np.random.default_rng(seed).choice(labels, size=round(share * len(labels)), replace=False))
    removed = set(held_out)
    folder.mkdir(parents=True, exist_ok=True)
    for split, dataset in corpus.splits.items():
        with gzip.open(folder / f"{split}.jsonl.gz", "wt", encoding="utf-8") as out:
            for record in dataset:
                kept = [label for label in record["labels"] if split != "train" or label not in removed]
                out.write(json.dumps({"id": record["id"], "text": record["text"], "labels": kept}) + "\n")
    catalogue = folder.parent / "labels.jsonl"
    catalogue.write_text("".join(json.dumps({"label": label, "description": label}) + "\n" for label in labels))
    return held_out, catalogue


def held_out_scores(predictions: list[list[str]], gold: list[list[str]], held_out: set[str]) -> dict[str, float]:
    """P@5 and R@5 of the held-out labels, among all predictions and among the held-out ones alone, on the
    documents that carry one."""
    totals = {"P@5": 0.0, "R@5": 0.0, "P@5 among held-out": 0.0, "R@5 among held-out": 0.0}
    documents = [
        (ranked, [g for g in labels if g in held_out]) for ranked, labels in zip(predictions, gold, strict=True)
    ]
    documents = [(ranked, wanted) for ranked, wanted in documents if wanted]
    for ranked, wanted in documents:
        for suffix, candidates in (("", ranked), (" among held-out", [r for r in ranked if r in held_out])):
            hits = len(set(candidates[:5]) & set(wanted))
            totals[f"P@5{suffix}"] += hits / 5
            totals[f"R@5{suffix}"] += hits / len(wanted)
    return {name: 100 * value / max(1, len(documents)) for name, value in totals.items()} | {
        "documents": len(documents)
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data/us_bills_110_crs_summary")
    parser.add_argument("--work", default="/tmp/plant-unseen")
    parser.add_argument("--share", type=float, default=0.1, help="share of the training labels held out")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bf16", action="store_true", help="train the head under bf16 autocast")
    parser.add_argument("--cache_dir", default=None, help="frozen-backbone states (default: <work>/<dataset>/cache)")
    args = parser.parse_args()
    root = Path(args.work) / Path(args.data).name
    held_out, catalogue = derived_corpus(Path(args.data), root / "corpus", args.share, args.seed)
    run = root / "run"
    report = fit(
        PlantArguments(data=str(root / "corpus"), label_descriptions=str(catalogue),
                       cache_dir=args.cache_dir or str(root / "cache"), resume=True),
        PlantTrainingArguments(output_dir=str(run), seed=args.seed, bf16=args.bf16,
                               use_cpu=not torch.cuda.is_available(), disable_tqdm=True),
    )  # fmt: skip
    model = PlantForMultiLabelClassification.from_pretrained(run / "model").eval()
    test = load_corpus(str(root / "corpus")).splits["test"]
    results = {"held_out_labels": len(held_out), "share": args.share, "memory": report.get("memory")}
    for name, weight in (("with descriptions", model.config.memory_description_weight), ("without", 0.0)):
        model.config.memory_description_weight = weight
        classify = pipeline("xmc-classification", model=model, tokenizer=str(run / "model"))
        ranked = [[entry["label"] for entry in row] for row in classify(list(test["text"]), top_k=None, batch_size=8)]
        results[name] = held_out_scores(ranked, list(test["labels"]), set(held_out))
    results["all labels"] = {name: report[name] for name in ("P@1", "P@5", "nDCG@5", "PSP@5")}
    write_json(root / "unseen_labels.json", results)
    lines = ["| | P@5 | R@5 | P@5 among held-out | R@5 among held-out |", "|---|---|---|---|---|"]
    for name in ("with descriptions", "without"):
        row = results[name]
        lines.append(f"| {name} | " + " | ".join(f"{row[key]:.2f}" for key in list(row)[:4]) + " |")
    (root / "unseen_labels.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
