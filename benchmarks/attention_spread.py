"""How many tokens a label's attention reads: at random initialisation, as planted, and after fine-tuning.

    python benchmarks/attention_spread.py --data ../shared/data/us_bills_110_crs_summary --work /tmp/plant-quality \
        --run contextual-seed0-frac0.1-bf16 --fraction 0.1

Its figures go to `<work>/<dataset>/attention_spread-<run>.json`.

For a finished PLANT run of `quality.py` (its folder under `<work>/<dataset>/`): on the first `--documents` dev
documents, for each document and each of its labels, the effective number of tokens the label's attention reads
(`exp` of the attention's entropy over the document's tokens) and the largest weight, beside the document's length,
for a fresh head at random initialisation, the same head with the run's ranker planted, and the run's fine-tuned
model. The dev states come from the run's cache.
"""

import argparse
import sys
from pathlib import Path

import quality
import torch

from plant_hf import PlantForMultiLabelClassification
from plant_hf.cache import CachedDocumentCollator
from plant_hf.files import write_json
from plant_hf.planting.transplant import load_ranker, plant
from plant_hf.recipe import classifier, prepare_run


def spread(model: PlantForMultiLabelClassification, documents, count: int, batch_size: int = 16) -> dict[str, float]:
    """Mean effective tokens, mean largest weight and mean length over the (document, own label) pairs."""
    effective, largest, lengths = [], [], []
    collator = CachedDocumentCollator()
    with torch.no_grad():
        for begin in range(0, count, batch_size):
            items = [documents[index] for index in range(begin, min(begin + batch_size, count))]
            batch = collator([{key: value for key, value in item.items() if key != "label_ids"} for item in items])
            width = max(len(item["label_ids"]) for item in items)
            labels = torch.full((len(items), width), -1, dtype=torch.long)
            for row, item in enumerate(items):
                labels[row, : len(item["label_ids"])] = torch.as_tensor(item["label_ids"])
            scores = model.score.document_label_scores(
                batch["token_states"].float(), batch["attention_mask"], labels, batch["input_ids"]
            )
            weights = model.score.attention_weights(scores)
            real = labels >= 0
            entropy = -(torch.xlogy(weights, weights)).sum(-1)
            effective.append(entropy.exp()[real])
            largest.append(weights.amax(-1)[real])
            lengths.append(batch["attention_mask"].sum(-1, keepdim=True).expand_as(labels)[real].float())
    return {
        "effective_tokens": float(torch.cat(effective).mean()),
        "median_effective_tokens": float(torch.cat(effective).median()),
        "largest_weight": float(torch.cat(largest).mean()),
        "document_tokens": float(torch.cat(lengths).mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data/us_bills_110_crs_summary")
    parser.add_argument("--work", default="/tmp/plant-quality")
    parser.add_argument("--run", required=True, help="the PLANT run's folder name under <work>/<dataset>/")
    parser.add_argument("--fraction", type=float, default=1.0, help="the run's share of the training split")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--documents", type=int, default=256, help="dev documents measured")
    args = parser.parse_args()
    work = Path(args.work) / Path(args.data).name
    run = work / args.run
    if not (run / "model" / "config.json").exists():
        sys.exit(f"{run} holds no finished run: run benchmarks/quality.py first")
    settings = quality.plant_arguments(args.data, "contextual", args.fraction, work / "cache")
    context = prepare_run(settings, quality.training_arguments(work / "attention-spread", args.seed, quality.Budget()))
    torch.manual_seed(args.seed)
    fresh = classifier(context).eval()
    documents = context.cached("dev", fresh)
    count = min(args.documents, len(documents))
    results = {"random init": spread(fresh, documents, count)}
    plant(fresh, load_ranker(run / "ranker"))
    results["planted"] = spread(fresh, documents, count)
    tuned = PlantForMultiLabelClassification.from_pretrained(run / "model").eval()
    results["fine-tuned"] = spread(tuned, documents, count)
    print(f"python {' '.join(sys.argv)}\n")
    print("| attention | effective tokens (mean / median) | largest weight | document tokens |\n|---|---|---|---|")
    for name, values in results.items():
        print(f"| {name} | {values['effective_tokens']:.1f} / {values['median_effective_tokens']:.1f} | "
              f"{values['largest_weight']:.3f} | {values['document_tokens']:.0f} |")  # fmt: skip
    write_json(work / f"attention_spread-{args.run}.json", {"command": " ".join(sys.argv), "run": args.run, **results})


if __name__ == "__main__":
    main()
