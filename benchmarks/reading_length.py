"""Reading length: what reading more of each document buys, against what encoding and caching it costs.

    python benchmarks/reading_length.py --data ../shared/data/us_bills_113_fulltext --work /tmp/plant-quality

For each chunk limit in `--chunks` (fit's `--max_chunks`, chunks of fit's 256 tokens) the documents are read that far
by the frozen MiniLM and cached, and the systems of `benchmarks/quality.py` named in `--systems` train on those states
exactly as there (`linear`: the mean-pooled linear head; `plant`: fit's defaults, on `--fraction` of the training split;
`random`: the random-init head). Reported per limit: the share of the training tokens read and of the documents read
whole, the minutes the encoding took (all splits, measured when the cache was built) and the cache's size, then each
system's test P@5, PSP@5, macro-F1, epochs and minutes. The runs are quality.py's (same folders, resumable); the table
is written to `<work>/<dataset>/reading_length.md`.
"""

import argparse
import json
import sys
from pathlib import Path

import quality

SYSTEMS = ("linear", "plant", "random")


def run_system(system: str, data: str, seed: int, fraction: float, work: Path, budget: quality.Budget) -> dict:
    if system == "linear":
        return quality.run_linear(data, seed, work, budget)
    return quality.run_head(data, "contextual" if system == "plant" else "none", seed, fraction, work, budget)


def reading_cells(reading: dict) -> list[str]:
    """Share of training tokens read, share of documents read whole, encoding minutes, cache GiB."""
    train = reading["train"]
    read = train["kept_tokens"] / max(1, train["kept_tokens"] + train["dropped_tokens"])
    whole = 1 - train["truncated_documents"] / max(1, train["documents"])
    encoding = sum(split["encode_seconds"] or 0.0 for split in reading.values()) / 60
    size = sum(split["cache_bytes"] for split in reading.values()) / 2**30
    return [f"{100 * read:.1f}", f"{100 * whole:.1f}", f"{encoding:.1f}", f"{size:.2f}"]


def system_cells(report: dict) -> list[str]:
    epochs = " + ".join(f"{value:g}" for value in report["epochs"].values())
    return [f"{100 * report[name]:.2f}" for name in ("P@5", "PSP@5", "macro_f1")] + [
        epochs,
        f"{report['seconds'] / 60:.1f}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data/us_bills_113_fulltext")
    parser.add_argument("--work", default="/tmp/plant-quality")
    parser.add_argument("--chunks", type=int, nargs="+", default=[2, 4, 8], help="chunk limits to compare")
    parser.add_argument("--systems", nargs="+", choices=SYSTEMS, default=["linear"])
    parser.add_argument("--fraction", type=float, default=1.0, help="share of the training split for plant/random")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bf16", action="store_true", help="train the heads under bf16 autocast")
    args = parser.parse_args()
    work = Path(args.work) / Path(args.data).name
    work.mkdir(parents=True, exist_ok=True)
    header = ["chunks", "tokens read %", "documents whole %", "encoding min", "cache GiB"]
    lines = []
    for chunks in args.chunks:
        budget = quality.Budget(bf16=args.bf16, overrides=(("max_chunks", str(chunks)),))
        # The linear run always runs: it builds and measures the cache the others then read.
        reports = {"linear": quality.run_linear(args.data, args.seed, work, budget)}
        for system in args.systems:
            reports[system] = reports.get(system) or run_system(
                system, args.data, args.seed, args.fraction, work, budget
            )
        row = [str(chunks), *reading_cells(reports["linear"]["reading"])]
        for system in args.systems:
            row += system_cells(reports[system])
        lines.append("| " + " | ".join(row) + " |")
        print(json.dumps({"chunks": chunks, **{name: report for name, report in reports.items()}}, default=float))
    for system in args.systems:
        name = quality.SYSTEM_NAMES[system]
        header += [f"{name} {metric}" for metric in ("P@5", "PSP@5", "macro-F1", "epochs", "min")]
    table = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|", *lines]
    (work / "reading_length.md").write_text(f"python {' '.join(sys.argv)}\n\n" + "\n".join(table) + "\n")
    print("\n".join(table))


if __name__ == "__main__":
    main()
