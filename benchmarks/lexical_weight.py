"""The lexical channel's weight: dev and test metrics of finished quality runs at every weight, and the weight each
dev criterion would pick.

    python benchmarks/lexical_weight.py --data ../shared/data/reuters21578_modapte --work /tmp/plant-quality

For every finished PLANT run of `benchmarks/quality.py` with fit's defaults, the saved model predicts its dev and
test splits again (from the cached states), its lexical channel (`<run>/lexical`) scores them, and the two are fused
at each weight of `plant_hf.lexical.LEXICAL_WEIGHTS`. Writes `<work>/<dataset>/lexical_weight.md` (test metrics per
weight, means over the seeds; what each criterion picks on dev and scores on test) and `lexical_weight.png`.
"""

import argparse
import re
import shutil
import statistics
from pathlib import Path

import quality

from plant_hf import PlantForMultiLabelClassification
from plant_hf.lexical import LEXICAL_FOLDER, LEXICAL_WEIGHTS, LexicalRanker, fuse
from plant_hf.metrics import evaluate_predictions
from plant_hf.recipe import prepare_run, split_predictions
from plant_hf.training.evaluation import flatten_report

SHOWN = ("P@1", "P@5", "nDCG@5", "PSP@5", "freq_1-5_PSP@5", "freq_6-50_PSP@5", "freq_>50_PSP@5")
# Dev criteria for the weight: a metric, or the mean of several.
CRITERIA = {
    "P@5": ("P@5",),
    "nDCG@5": ("nDCG@5",),
    "PSP@5": ("PSP@5",),
    "mean of P@1, P@3, P@5, nDCG@5, PSP@5": ("P@1", "P@3", "P@5", "nDCG@5", "PSP@5"),
}


def curves(data: str, work: Path, folder: Path, seed: int, budget: quality.Budget) -> dict[str, dict[float, dict]]:
    """Every metric of the dev and the test split at each weight, for one finished run."""
    scratch = work / "lexical-weight" / folder.name
    shutil.rmtree(scratch, ignore_errors=True)  # only a run folder for prepare_run; nothing is kept
    context = prepare_run(
        quality.plant_arguments(data, "contextual", 1.0, work / "cache", budget),
        quality.training_arguments(scratch, seed, budget),
    )
    model = PlantForMultiLabelClassification.from_pretrained(folder / "model").eval()
    model.config.lexical_weight = 0.0  # the model's own predictions
    channel = LexicalRanker.load(folder / LEXICAL_FOLDER, context.vocabulary.labels)
    vocabulary, result = context.vocabulary, {}
    for split in ("dev", "test"):
        neural = split_predictions(context, model, split)
        lexical = channel.top_k(context.splits[split]["text"])
        truth, _ = vocabulary.evaluation_targets(context.splits[split]["labels"])
        result[split] = {
            float(weight): flatten_report(
                evaluate_predictions(truth, fuse(neural, lexical, weight), vocabulary.counts, vocabulary.num_documents)
            )
            for weight in LEXICAL_WEIGHTS
        }
    return result


def pick(dev: dict[float, dict], metrics: tuple[str, ...]) -> float:
    """The least weight with the best dev score (the mean of `metrics`)."""
    score = {weight: statistics.fmean(values[m] for m in metrics) for weight, values in dev.items()}
    return max(score, key=lambda weight: (score[weight], -weight))


def plot(runs: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    weights = [float(weight) for weight in LEXICAL_WEIGHTS]
    figure, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for axis, metric in zip(axes, ("P@5", "PSP@5", "freq_1-5_PSP@5"), strict=True):
        for split, style in (("dev", "--"), ("test", "-")):
            values = [100 * statistics.fmean(run[split][w][metric] for run in runs) for w in weights]
            axis.plot(weights, values, style, marker="o", markersize=3, label=split)
        axis.set_title(metric.replace("freq_1-5_", "labels seen 1-5 times: "))
        axis.set_xlabel("weight of the lexical channel")
        axis.grid(alpha=0.3)
    axes[0].legend()
    figure.suptitle(f"{title}: fused (1 - w) model + w lexical, mean over {len(runs)} seed(s)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data/reuters21578_modapte")
    parser.add_argument("--work", default="/tmp/plant-quality")
    parser.add_argument("--bf16", action="store_true", help="the runs were made with quality.py --bf16")
    args = parser.parse_args()
    budget = quality.Budget(bf16=args.bf16)
    work = Path(args.work) / Path(args.data).name
    pattern = budget.folder(Path(), r"contextual-seed(\d+)-frac1").name
    finished = [folder for folder in work.iterdir() if (folder / "benchmark_run.json").exists()]
    runs = sorted((int(match[1]), folder) for folder in finished if (match := re.fullmatch(pattern, folder.name)))
    results = [curves(args.data, work, folder, seed, budget) for seed, folder in runs]

    def mean(split: str, weight: float, metric: str) -> str:
        return f"{100 * statistics.fmean(run[split][weight][metric] for run in results):.2f}"

    lines = [f"Seeds {', '.join(str(seed) for seed, _ in runs)}; test metrics at each weight (mean over seeds):", ""]
    lines += ["| weight | " + " | ".join(SHOWN) + " |", "|---" * (len(SHOWN) + 1) + "|"]
    for weight in LEXICAL_WEIGHTS:
        lines.append(f"| {weight:g} | " + " | ".join(mean("test", float(weight), m) for m in SHOWN) + " |")
    lines += ["", "| dev criterion | weights picked | " + " | ".join(SHOWN) + " |", "|---" * (len(SHOWN) + 2) + "|"]
    for name, metrics in CRITERIA.items():
        chosen = [pick(run["dev"], metrics) for run in results]
        cells = [
            f"{100 * statistics.fmean(run['test'][w][m] for run, w in zip(results, chosen, strict=True)):.2f}"
            for m in SHOWN
        ]
        lines.append(f"| {name} | {', '.join(f'{w:g}' for w in chosen)} | " + " | ".join(cells) + " |")
    table = "\n".join(lines) + "\n"
    (work / "lexical_weight.md").write_text(table)
    plot(results, work / "lexical_weight.png", Path(args.data).name)
    print(table)


if __name__ == "__main__":
    main()
