"""What the lexical channel costs at inference: the xmc-classification pipeline's time per document with and without it.

    python benchmarks/lexical_cost.py --data ../shared/data/us_bills_110_crs_summary \
        --model /tmp/plant-quality/us_bills_110_crs_summary/contextual-seed0-frac1-bf16/model

The model folder of a finished `plant-hf fit` run with a lexical channel classifies the first `--documents` test
documents of the corpus, in batches of `--batch_size`, once with the channel and once without (`lexical=False`),
after one warm-up batch each; also the channel alone (its TF-IDF features and classifiers) on the same documents,
and the time to load it.
"""

import argparse
import statistics
import time
from pathlib import Path

import torch
from transformers import pipeline

import plant_hf  # noqa: F401  (registers the pipeline)
from plant_hf.data import load_corpus
from plant_hf.lexical import model_lexical_channel


def timed(run, repeats: int) -> float:
    """The median of `repeats` wall times of `run()`, in seconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a model folder with a lexical channel (lexical/)")
    parser.add_argument("--data", default="../shared/data/us_bills_110_crs_summary")
    parser.add_argument("--documents", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    texts = load_corpus(args.data, splits=["test"]).splits["test"]["text"][: args.documents]
    classify = pipeline("xmc-classification", model=args.model)
    start = time.perf_counter()
    channel = model_lexical_channel(classify.model)
    loading = time.perf_counter() - start
    if channel is None:
        raise SystemExit(f"{args.model} has no lexical channel (its config's lexical_weight is 0).")
    seconds = {}
    with torch.inference_mode():
        for name, lexical in (("with the channel", True), ("model alone", False)):
            classify(texts[: args.batch_size], top_k=5, lexical=lexical, batch_size=args.batch_size)  # warm-up
            seconds[name] = timed(
                lambda lexical=lexical: classify(texts, top_k=5, lexical=lexical, batch_size=args.batch_size),
                args.repeats,
            )
    seconds["channel alone"] = timed(lambda: [channel.top_k([text]) for text in texts], args.repeats)
    print(f"{Path(args.model)}: {classify.model.config.num_labels} labels, {len(texts)} documents, "
          f"{torch.get_num_threads()} threads; loading the channel {loading:.2f} s")  # fmt: skip
    print("| pipeline | ms per document |\n|---|---|")
    for name, value in seconds.items():
        print(f"| {name} | {1000 * value / len(texts):.1f} |")
    overhead = seconds["with the channel"] / seconds["model alone"] - 1
    print(f"\nthe channel adds {100 * overhead:.1f}% to the pipeline's time")


if __name__ == "__main__":
    main()
