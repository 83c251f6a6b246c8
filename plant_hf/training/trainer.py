"""Trainer glue for fine-tuning PLANT: training arguments with the recipe's defaults, discriminative learning
rates for the head, the planted attention and the backbone, and gradual unfreezing."""

from dataclasses import dataclass, field

import torch
from torch import nn
from transformers import Trainer, TrainerCallback, TrainingArguments

# The three parts of a PLANT classifier that the recipe trains at their own rates and unfreezes in turn.
PARAMETER_GROUPS = ("head", "attention", "backbone")


def parameter_group(name: str) -> str:
    """The recipe group of a parameter, by its (possibly PEFT-wrapped) name: the head's output weights and biases,
    the planted attention (everything else of the label attention), or the backbone."""
    if "label_attention." not in name:
        return "backbone"
    return "head" if name.rsplit(".", 1)[-1] in ("label_weights", "label_bias") else "attention"


def parse_unfreeze_schedule(schedule: str | None) -> dict[str, float]:
    """`"attention=1,backbone=2"` -> the epoch at which each group starts training (absent groups: epoch 0)."""
    if not schedule:
        return {}
    result = {}
    for item in schedule.split(","):
        group, _, epoch = item.partition("=")
        group = group.strip()
        if group not in PARAMETER_GROUPS or not epoch:
            raise ValueError(
                f"Bad unfreeze schedule item {item!r}: write group=epoch with group one of {PARAMETER_GROUPS}, "
                'e.g. "attention=1,backbone=2".'
            )
        result[group] = float(epoch)
    return result


@dataclass
class PlantTrainingArguments(TrainingArguments):
    """`TrainingArguments` with the PLANT recipe's defaults and its discriminative learning rates.

    `learning_rate` is the head's rate; the planted attention trains at `planted_lr_fraction` of it, the backbone
    (LoRA adapters, or all its weights with `backbone_mode=full`) at `backbone_learning_rate`.
    """

    output_dir: str | None = field(default="plant-run", metadata={"help": "The run's folder: every stage's output."})
    learning_rate: float = field(default=2e-3, metadata={"help": "Peak learning rate of the head."})
    planted_lr_fraction: float = field(
        default=0.5, metadata={"help": "The planted attention's learning rate as a fraction of the head's."}
    )
    backbone_learning_rate: float = field(
        default=1e-4, metadata={"help": "Peak learning rate of the backbone (its LoRA adapters, or all of it)."}
    )
    unfreeze_schedule: str | None = field(
        default=None,
        metadata={
            "help": 'Gradual unfreezing: the epoch at which each group starts training, e.g. "attention=1,backbone=2"'
            " (the head trains from the start; unlisted groups too)."
        },
    )
    num_train_epochs: float = field(default=5.0, metadata={"help": "Fine-tuning epochs."})
    per_device_train_batch_size: int = field(default=16, metadata={"help": "Documents per device and step."})
    per_device_eval_batch_size: int = field(default=32, metadata={"help": "Documents per device in evaluation."})
    warmup_steps: float = field(default=0.05, metadata={"help": "Warm-up steps, or a share of all steps if < 1."})
    eval_strategy: str = field(default="epoch", metadata={"help": "When to evaluate on the dev split."})
    save_strategy: str = field(default="epoch", metadata={"help": "When to write a resumable checkpoint."})
    logging_steps: float = field(default=50, metadata={"help": "Log the training loss every this many steps."})
    load_best_model_at_end: bool = field(default=True, metadata={"help": "Keep the best checkpoint on dev."})
    metric_for_best_model: str | None = field(default="P@5", metadata={"help": "Dev metric that picks the best."})
    greater_is_better: bool | None = field(default=True, metadata={"help": "Whether that metric is better high."})
    save_total_limit: int | None = field(default=2, metadata={"help": "Checkpoints kept on disk."})
    dataloader_pin_memory: bool = field(
        default=torch.cuda.is_available(), metadata={"help": "Pin batches in memory (default: when CUDA is there)."}
    )

    def group_learning_rates(self) -> dict[str, float]:
        return {
            "head": self.learning_rate,
            "attention": self.learning_rate * self.planted_lr_fraction,
            "backbone": self.backbone_learning_rate,
        }


class PlantTrainer(Trainer):
    """A Trainer whose optimizer gives the head, the planted attention and the backbone their own learning rates."""

    def create_optimizer(self, model: nn.Module | None = None):
        if self.optimizer is None:
            model = self.model if model is None else model
            decay = set(self.get_decay_parameter_names(model))
            rates = self.args.group_learning_rates()
            groups: dict[tuple[str, bool], list[nn.Parameter]] = {}
            for name, parameter in model.named_parameters():
                if parameter.requires_grad:
                    groups.setdefault((parameter_group(name), name in decay), []).append(parameter)
            optimizer_class, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, model)
            self.optimizer = optimizer_class(
                [
                    {"params": params, "lr": rates[group], "weight_decay": self.args.weight_decay if decays else 0.0}
                    for (group, decays), params in groups.items()
                ],
                **optimizer_kwargs,
            )
        return self.optimizer


class GradualUnfreezing(TrainerCallback):
    """Hold groups of parameters still until their epoch comes: `{"attention": 1, "backbone": 2}` trains the head
    alone in epoch 0, adds the planted attention in epoch 1 and the backbone from epoch 2.

    Held parameters keep their gradients computed (so that DDP's reductions line up) but the optimizer never sees
    them: their `.grad` is dropped before each step.
    """

    def __init__(self, schedule: dict[str, float]):
        self.schedule = schedule
        self._parameters: list[tuple[str, nn.Parameter]] = []

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._parameters = [
            (parameter_group(name), parameter)
            for name, parameter in model.named_parameters()
            if parameter.requires_grad and parameter_group(name) in self.schedule
        ]

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        epoch = state.epoch or 0.0
        for group, parameter in self._parameters:
            if epoch < self.schedule[group]:
                parameter.grad = None

    def training(self, epoch: float) -> dict[str, bool]:
        """Which groups train at a given epoch."""
        return {group: epoch >= self.schedule.get(group, 0.0) for group in PARAMETER_GROUPS}


__all__ = [
    "PARAMETER_GROUPS",
    "GradualUnfreezing",
    "PlantTrainer",
    "PlantTrainingArguments",
    "parameter_group",
    "parse_unfreeze_schedule",
]
