"""Decision thresholds: test macro-F1 of finished quality runs under thresholds tuned on their dev split.

    python benchmarks/thresholds.py --data ../shared/data/reuters21578_modapte --work /tmp/plant-quality

For every finished run of `benchmarks/quality.py` with fit's defaults (PLANT, and the random-init head), the saved
model predicts its dev and test splits again (from the cached states), and the test macro-F1 is computed under:
one threshold of 0.5; one threshold shared by all labels, tuned on dev for macro-F1; each label's own threshold,
tuned on dev for its F1; and `tune_label_thresholds`' default, its own for labels with at least 5 dev examples and
the shared one for the rest. Mean and standard deviation over the runs' seeds, in percent.
"""

import argparse
import re
import shutil
import statistics
from pathlib import Path

import quality

from plant_hf import PlantForMultiLabelClassification
from plant_hf.metrics import as_truth_matrix, threshold_metrics, tune_label_thresholds
from plant_hf.recipe import prepare_run, split_predictions

RULES = {
    "0.5 for all": lambda truth, predictions: 0.5,
    "one shared, tuned": lambda truth, predictions: tune_label_thresholds(truth, predictions, min_positives=10**9),
    "each label's own": lambda truth, predictions: tune_label_thresholds(truth, predictions, min_positives=1),
    "own from 5 dev examples (default)": lambda truth, predictions: tune_label_thresholds(truth, predictions),
}


def run_folder_pattern(planting: str) -> str:
    """The folder name quality.py gives a full-data run with fit's defaults, the seed as the regex group."""
    return quality.head_budget(planting, quality.Budget()).folder(Path(), rf"{planting}-seed(\d+)-frac1").name


SYSTEMS = {"PLANT": "contextual", "random-init head": "none"}


def run_scores(data: str, work: Path, folder: Path, planting: str, seed: int, scratch: Path) -> dict[str, float]:
    """Test macro-F1 of one finished run under each rule."""
    settings = quality.plant_arguments(data, planting, 1.0, work / "cache")
    shutil.rmtree(scratch / folder.name, ignore_errors=True)  # only a run folder for prepare_run; nothing is kept
    context = prepare_run(settings, quality.training_arguments(scratch / folder.name, seed, quality.Budget()))
    model = PlantForMultiLabelClassification.from_pretrained(folder / "model").eval()
    width = len(context.vocabulary)
    truth = {split: as_truth_matrix(context.vocabulary.evaluation_targets(context.splits[split]["labels"])[0], width)
             for split in ("dev", "test")}  # fmt: skip
    predictions = {split: split_predictions(context, model, split) for split in ("dev", "test")}
    return {
        rule: threshold_metrics(truth["test"], predictions["test"], tune(truth["dev"], predictions["dev"]))["macro_f1"]
        for rule, tune in RULES.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data/reuters21578_modapte")
    parser.add_argument("--work", default="/tmp/plant-quality")
    args = parser.parse_args()
    work = Path(args.work) / Path(args.data).name
    lines = ["| system | seeds | " + " | ".join(RULES) + " |", "|---" * (len(RULES) + 2) + "|"]
    for system, planting in SYSTEMS.items():
        pattern = run_folder_pattern(planting)
        finished = [folder for folder in work.iterdir() if (folder / "benchmark_run.json").exists()]
        runs = sorted((int(match[1]), folder) for folder in finished if (match := re.fullmatch(pattern, folder.name)))
        if not runs:
            continue
        scores = [run_scores(args.data, work, folder, planting, seed, work / "thresholds") for seed, folder in runs]
        cells = []
        for rule in RULES:
            values = [100 * score[rule] for score in scores]
            spread = statistics.pstdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.fmean(values):.2f} ± {spread:.2f}")
        lines.append(f"| {system} | {', '.join(str(seed) for seed, _ in runs)} | " + " | ".join(cells) + " |")
    table = "\n".join(lines) + "\n"
    (work / "thresholds.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
