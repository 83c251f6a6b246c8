"""What the retrieval memory costs: building it, its size, and the time to score a batch of documents against it, on
synthetic keys (random unit vectors, a few labels each), at growing numbers of training documents.

    python benchmarks/memory_cost.py --entries 10000 100000 1000000
    python benchmarks/memory_cost.py --entries 1000000 --labels 100000 --descriptions 90000

With `--descriptions`, that many labels (of `--labels`) have no training document and a description key each, as a
label catalogue gives them; their description scores are part of the scoring time.

For each memory size: the seconds to assemble `PlantDocumentMemory.from_entries`, its bytes, the peak resident memory
of the process so far, and the median wall time of `memory.scores` for a batch of `--batch_size` query documents (exact
search: one product with every key, top-k, softmax, scatter of the neighbours' labels), per document. Compare with the
forward pass of the model it serves (benchmarks/lexical_cost.py: 208 ms per us_bills document at 4,190 labels on two
cores).
"""

import argparse
import resource
import statistics
import time

import torch

from plant_hf.modeling_plant import PlantDocumentMemory


def synthetic_memory(
    entries: int, hidden: int, labels: int, per_document: int, descriptions: int, seed: int
) -> PlantDocumentMemory:
    generator = torch.Generator().manual_seed(seed)
    keys = torch.randn(entries, hidden, generator=generator)
    # Documents carry the first labels; the last `descriptions` labels have none, only a description.
    label_ids = torch.randint(0, labels - descriptions, (entries, per_document), generator=generator).tolist()
    described = (torch.randn(descriptions, hidden, generator=generator), list(range(labels - descriptions, labels)))
    return PlantDocumentMemory.from_entries(
        keys, label_ids, labels, top_k=32, temperature=0.05, descriptions=described if descriptions else None
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--hidden", type=int, default=384, help="key size (MiniLM's hidden size)")
    parser.add_argument("--labels", type=int, default=4190, help="label count (us_bills')")
    parser.add_argument("--labels_per_document", type=int, default=5)
    parser.add_argument("--descriptions", type=int, default=0, help="labels without documents, with a description")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(
        "| training documents | labels | descriptions | build (s) | memory (MiB) | peak RSS (GiB) | scoring (ms/doc) |"
    )
    print("|---|---|---|---|---|---|---|")
    for entries in args.entries:
        start = time.perf_counter()
        memory = synthetic_memory(
            entries, args.hidden, args.labels, args.labels_per_document, args.descriptions, seed=0
        )
        built = time.perf_counter() - start
        size = sum(memory.get_buffer(name).numel() * memory.get_buffer(name).element_size() for name in memory.TENSORS)
        size /= 2**20
        queries = torch.nn.functional.normalize(torch.randn(args.batch_size, args.hidden), dim=-1)
        times = []
        with torch.no_grad():
            for repeat in range(args.repeats + 1):  # the first is a warm-up
                start = time.perf_counter()
                memory.scores(queries)
                memory.description_scores(queries)
                times += [time.perf_counter() - start] if repeat else []
        per_document = 1000 * statistics.median(times) / args.batch_size
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        row = [
            f"{entries:,}",
            f"{args.labels:,}",
            f"{args.descriptions:,}",
            f"{built:.1f}",
            f"{size:.0f}",
            f"{peak:.2f}",
        ]
        print("| " + " | ".join(row) + f" | {per_document:.1f} |", flush=True)
        del memory


if __name__ == "__main__":
    main()
