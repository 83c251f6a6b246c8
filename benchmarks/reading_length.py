"""Reading length: what reading more of each document buys, against what encoding and caching it costs.

    python benchmarks/reading_length.py --data ../shared/data/us_bills_113_fulltext --work /tmp/plant-quality

For each chunk limit in `--chunks` (fit's `--max_chunks`, in fit's chunks of 256 tokens):
- what the limit reads: the share of the training tokens and of the training documents read whole, by fit's own
  tokenisation and chunking;
- what it costs with a frozen backbone: the cache's size (every split's kept tokens x hidden size x 2 bytes, exactly
  what the fp16 cache holds) and the encoding's minutes, extrapolated by token count from timing the encoding of a
  seeded sample of `--sample` training documents at that limit (the backbone's cost is linear in the chunks read;
  the timing is kept in `<work>/<dataset>/reading-timing`);
- what it buys: PECOS XR-Linear (benchmarks/xr_linear.py, TF-IDF) trained and tested on every text cut where fit's
  limit cuts it, and a row for the whole texts: how much of the labels' evidence lies past the limit, for a model that
  reads every word it is given (test P@5, PSP@5, macro-F1 at 0.5 and PSP@5 on labels seen 1-5 times in training);
- with `--systems`, the neural systems of `benchmarks/quality.py` trained on the frozen states of that reading, exactly
  as there (`linear`; `plant` and `random` on `--fraction` of the training split): each limit then encodes the whole
  corpus (hours on 2 CPU cores for long documents; minutes on a GPU).

The table is written to `<work>/<dataset>/reading_length.md`; runs are kept and read back as in quality.py.
"""

import argparse
import gzip
import json
import random
import shutil
import sys
from pathlib import Path

import quality
from transformers import AutoConfig

from plant_hf.cache import TokenStateCache
from plant_hf.files import write_json
from plant_hf.recipe import classifier, prepare_run

SYSTEMS = ("linear", "plant", "random")


def reading_context(data: str, chunks: int | None, work: Path):
    """fit's run context at this chunk limit (fit's own without one), in a scratch folder: only its tokenisation and
    backbone are used."""
    budget = quality.Budget(overrides=() if chunks is None else (("max_chunks", str(chunks)),))
    scratch = work / "reading-scratch" / f"chunks{chunks}"
    shutil.rmtree(scratch, ignore_errors=True)
    settings = quality.plant_arguments(data, "none", 1.0, work / "cache", budget)
    return prepare_run(settings, quality.training_arguments(scratch, 0, budget))


def coverage(context) -> dict:
    """Tokens kept and dropped per split, documents cut in the training split."""
    splits = {}
    for split in ("train", "dev", "test"):
        tokenized = context.tokenized(split)
        dropped = tokenized["dropped_tokens"]
        splits[split] = {"kept": sum(tokenized["num_tokens"]), "dropped": sum(dropped), "documents": len(tokenized),
                         "cut": sum(count > 0 for count in dropped)}  # fmt: skip
    return splits


def encoding_seconds(context, sample: int, seed: int, record: Path) -> float:
    """Seconds the frozen backbone takes to encode every split at this limit, extrapolated by token count from a
    timed sample of training documents; kept in `record`, so that the table is redrawn without timing again."""
    if record.exists():
        return json.loads(record.read_text())["seconds"]
    tokenized = context.tokenized("train")
    rows = sorted(random.Random(seed).sample(range(len(tokenized)), min(sample, len(tokenized))))
    subset, model = tokenized.select(rows), classifier(context)
    TokenStateCache.build(model, subset.select([0]), key="warm-up", progress=False)  # one-off costs stay out
    cache = TokenStateCache.build(model, subset, key="timing", progress=False)
    total = sum(sum(context.tokenized(split)["num_tokens"]) for split in ("train", "dev", "test"))
    seconds = cache.info["encode_seconds"] * total / max(1, sum(subset["num_tokens"]))
    record.parent.mkdir(parents=True, exist_ok=True)
    write_json(record, {"seconds": seconds, "sample": sample, "seed": seed})
    return seconds


def cut_texts(context, data: Path, chunks: int | None, folder: Path) -> Path:
    """The train and test files with every text cut after the last token fit reads at this limit."""
    if (folder / "test.jsonl.gz").exists():
        return folder
    tokenizer, size = context.tokenizer, context.args.chunk_size - context.tokenizer.num_special_tokens_to_add()
    staging = folder.with_name(folder.name + ".partial")
    staging.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        source = next(data.glob(f"{split}.jsonl*"))
        opener = gzip.open if source.suffix == ".gz" else open
        with opener(source, "rt", encoding="utf-8") as handle:
            records = [json.loads(line) for line in handle if line.strip()]
        if chunks is not None:
            offsets = tokenizer([record["text"] for record in records], add_special_tokens=False,
                                return_offsets_mapping=True)["offset_mapping"]  # fmt: skip
            for record, spans in zip(records, offsets, strict=True):
                if len(spans) > chunks * size:
                    record["text"] = record["text"][: spans[chunks * size - 1][1]]
        with gzip.open(staging / f"{split}.jsonl.gz", "wt", encoding="utf-8") as handle:
            handle.writelines(json.dumps(record) + "\n" for record in records)
    staging.rename(folder)
    return folder


def reading_cells(splits: dict, seconds: float, hidden: int) -> list[str]:
    train = splits["train"]
    read = train["kept"] / max(1, train["kept"] + train["dropped"])
    whole = 1 - train["cut"] / max(1, train["documents"])
    size = sum(split["kept"] for split in splits.values()) * hidden * 2 / 2**30
    return [f"{100 * read:.1f}", f"{100 * whole:.1f}", f"{seconds / 60:.1f}", f"{size:.2f}"]


def metric_cells(report: dict, epochs: bool = True) -> list[str]:
    cells = [f"{100 * report[name]:.2f}" for name in ("P@5", "PSP@5", "macro_f1")]
    rare = report["by_frequency"].get("1-5")  # labels seen 1-5 times in training
    cells.append("-" if rare is None else f"{100 * rare['PSP@5']:.2f}")
    if epochs:
        cells.append(" + ".join(f"{value:g}" for value in report["epochs"].values()))
    return [*cells, f"{report['seconds'] / 60:.1f}"]


def run_system(system: str, args, work: Path, chunks: int) -> dict:
    budget = quality.Budget(bf16=args.bf16, overrides=(("max_chunks", str(chunks)),))
    if system == "linear":
        return quality.run_linear(args.data, args.seed, work, budget)
    planting = "contextual" if system == "plant" else "none"
    return quality.run_head(args.data, planting, args.seed, args.fraction, work, budget)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data/us_bills_113_fulltext")
    parser.add_argument("--work", default="/tmp/plant-quality")
    parser.add_argument("--chunks", type=int, nargs="+", default=[2, 4, 8, 16], help="chunk limits to compare")
    parser.add_argument("--sample", type=int, default=32, help="training documents timed per limit")
    parser.add_argument("--systems", nargs="*", choices=SYSTEMS, default=[], help="neural systems to train per limit")
    parser.add_argument("--fraction", type=float, default=1.0, help="share of the training split for plant/random")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bf16", action="store_true", help="train the neural heads under bf16 autocast")
    args = parser.parse_args()
    work = Path(args.work) / Path(args.data).name
    work.mkdir(parents=True, exist_ok=True)
    header = ["chunks", "tokens read %", "documents whole %", "encoding min", "cache GiB",
              "XR-Linear P@5", "PSP@5", "macro-F1", "PSP@5 1-5", "min"]  # fmt: skip
    for system in args.systems:
        header += [f"{quality.SYSTEM_NAMES[system]} P@5", "PSP@5", "macro-F1", "PSP@5 1-5", "epochs", "min"]
    lines, results = [], {}
    for chunks in [*args.chunks, None]:
        context = reading_context(args.data, chunks, work)
        name = "all" if chunks is None else str(chunks)
        texts = cut_texts(context, Path(args.data), chunks, work / "reading-texts" / f"chunks{name}")
        xr = quality.run_xr_linear(str(texts), work / "reading-xr" / f"chunks{name}")
        if chunks is None:
            lines.append("| whole text | 100.0 | 100.0 | - | - | " + " | ".join(metric_cells(xr, epochs=False)) + " |")
            results[name] = {"xr-linear": xr}
            continue
        splits = coverage(context)
        timing = work / "reading-timing" / f"chunks{name}-sample{args.sample}-seed{args.seed}.json"
        seconds = encoding_seconds(context, args.sample, args.seed, timing)
        row = [name, *reading_cells(splits, seconds, AutoConfig.from_pretrained(context.backbone).hidden_size)]
        row += metric_cells(xr, epochs=False)
        reports = {system: run_system(system, args, work, chunks) for system in args.systems}
        for system in args.systems:
            row += metric_cells(reports[system])
        lines.append("| " + " | ".join(row) + " |")
        results[name] = {"coverage": splits, "encode_seconds": seconds, "xr-linear": xr, **reports}
        print(json.dumps({"chunks": chunks, **results[name]}, default=float), flush=True)
    table = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|", *lines]
    write_json(work / "reading_length.json", results)
    (work / "reading_length.md").write_text(f"python {' '.join(sys.argv)}\n\n" + "\n".join(table) + "\n")
    print("\n".join(table))


if __name__ == "__main__":
    main()
