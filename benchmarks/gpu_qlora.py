"""QLoRA training throughput of the PLANT head on a Mistral-7B-shaped backbone, against
MistralForSequenceClassification on the same 4-bit backbone with the same adapters.

    python benchmarks/gpu_qlora.py --out /tmp/gpu-qlora.json            # on a GPU machine
    python benchmarks/gpu_qlora.py --tiny --steps 2 --out /tmp/tiny.json  # a CPU check of the script itself

The weights are random (nothing is downloaded): the backbone is written once as a bf16 checkpoint, then each system
loads it through `from_pretrained` with a 4-bit NF4 `BitsAndBytesConfig`, gets LoRA adapters on every attention and
MLP projection (r 16) and trains its head fully, with gradient checkpointing, under bf16 autocast (as `--bf16`
trains). Reported per system: tokens per second, peak GPU memory, and achieved TFLOP/s against the card's dense
bf16 peak, counting `4 N` FLOPs per token for the frozen 4-bit weights (forward and input gradients), the attention
products, and, for PLANT, the eight `tokens x labels x key/value` products of its head.
"""

import argparse
import datetime
import gc
import json
import platform
import sys
import time
from pathlib import Path

import torch
from transformers import BitsAndBytesConfig, MistralConfig, MistralForCausalLM, MistralForSequenceClassification

from plant_hf import PlantForMultiLabelClassification
from plant_hf.files import write_json

# Dense bf16 peak (TFLOP/s) of the cards this may run on, from their data sheets.
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0}


def backbone_config(tiny: bool) -> MistralConfig:
    if tiny:
        return MistralConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2, vocab_size=1000, pad_token_id=0)  # fmt: skip
    return MistralConfig(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                         num_key_value_heads=8, vocab_size=32768, pad_token_id=0)  # fmt: skip


def write_backbone(folder: Path, config: MistralConfig, device: str) -> Path:
    """A random bf16 Mistral checkpoint, made once (on the GPU when there is one: a 7B init on CPU is slow)."""
    if (folder / "config.json").exists():
        return folder
    torch.manual_seed(0)
    with torch.device(device):
        model = MistralForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(folder)
    del model
    return folder


def quantized(device: str) -> dict:
    if device != "cuda":
        return {"quantization_config": BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4")}
    compute = torch.bfloat16
    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute)
    return {"quantization_config": config, "dtype": compute, "device_map": {"": 0}}


def build(system: str, backbone: Path, labels: int, chunk_size: int, device: str):
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if system == "plant":
        model = PlantForMultiLabelClassification.from_backbone(
            str(backbone), num_labels=labels, chunk_size=chunk_size, **quantized(device)
        )
    else:
        model = MistralForSequenceClassification.from_pretrained(
            str(backbone), num_labels=labels, problem_type="multi_label_classification", **quantized(device)
        )
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    # The same adapter on both: every linear layer of the backbone; each head (`score`) trains whole.
    config = LoraConfig(task_type="SEQ_CLS", r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear")
    return get_peft_model(model, config)


def flops_per_token(config: MistralConfig, system: str, labels: int, tokens: int, backbone_params: int) -> float:
    """Forward and input-gradient FLOPs of the frozen weights, attention products (forward and backward), head."""
    attention = 3 * 4 * config.num_hidden_layers * tokens * config.hidden_size
    head = 8 * 2 * config.hidden_size * labels if system == "plant" else 6 * config.hidden_size * labels / tokens
    return 4 * backbone_params + attention + head


def measure(system: str, backbone: Path, args, device: str) -> dict:
    torch.manual_seed(0)
    config = MistralConfig.from_pretrained(backbone)
    model = build(system, backbone, args.labels, args.tokens, device)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    input_ids = torch.randint(1, config.vocab_size, (args.batch, args.tokens), device=device)
    targets = (torch.rand(args.batch, args.labels, device=device) < 0.002).float()

    def step() -> None:
        with torch.autocast(device, dtype=torch.bfloat16):  # as `--bf16` trains: the head's products in bf16
            loss = model(input_ids=input_ids, labels=targets).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    for _ in range(args.steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - started) / args.steps
    tokens_per_second = args.batch * args.tokens / seconds
    flops = flops_per_token(config, system, args.labels, args.tokens, _matmul_parameter_count(config))
    result = {
        "system": system,
        "seconds_per_step": seconds,
        "tokens_per_second": tokens_per_second,
        "achieved_tflops": flops * tokens_per_second / 1e12,
        "peak_memory_gb": torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None,
    }
    return result


def _matmul_parameter_count(config: MistralConfig) -> int:
    """Weights of the decoder layers' projections (4-bit tensors store two per byte, so count from the shape)."""
    hidden, inner = config.hidden_size, config.intermediate_size
    key_value = config.num_key_value_heads * (hidden // config.num_attention_heads)
    return config.num_hidden_layers * (2 * hidden * hidden + 2 * hidden * key_value + 3 * hidden * inner)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="/tmp/gpu-qlora.json")
    parser.add_argument("--work", default="/tmp/gpu-qlora", help="where the random backbone checkpoint is written")
    parser.add_argument("--labels", type=int, default=8929, help="label count (MIMIC-III full: 8,929)")
    parser.add_argument("--tokens", type=int, default=2048, help="tokens per document (one chunk)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--tiny", action="store_true", help="a 2-layer, 64-wide Mistral: checks the script on CPU")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not args.tiny:
        parser.error("the 7B shape needs a GPU; pass --tiny to check the script on CPU")
    config = backbone_config(args.tiny)
    backbone = write_backbone(Path(args.work) / ("tiny" if args.tiny else "mistral-7b-random"), config, device)
    card = torch.cuda.get_device_name() if device == "cuda" else platform.processor() or platform.machine()
    peak = next((value for name, value in PEAK_TFLOPS.items() if name in card), None)
    results = {"command": "python " + " ".join(sys.argv),
               "date": datetime.date.today().isoformat(), "device": card, "peak_bf16_tflops": peak,
               "labels": args.labels, "tokens": args.tokens, "batch": args.batch, "systems": []}  # fmt: skip
    for system in ("plant", "sequence-classification"):
        result = measure(system, backbone, args, device)
        gc.collect()  # the measured model is gone: free its memory before the next one
        if device == "cuda":
            torch.cuda.empty_cache()
        if peak:
            result["share_of_peak"] = result["achieved_tflops"] / peak
        results["systems"].append(result)
        print(json.dumps(result), flush=True)
    write_json(Path(args.out), results)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
