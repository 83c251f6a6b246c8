"""Trainer glue for fine-tuning PLANT: training arguments with the recipe's defaults, discriminative learning
rates for the head, the planted attention and the backbone, gradual unfreezing, and training until the dev metric
stops improving."""

import json
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import datasets
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import SequentialSampler
from tqdm.auto import tqdm
from transformers import EarlyStoppingCallback, EvalPrediction, Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_callback import PrinterCallback, ProgressCallback
from transformers.trainer_pt_utils import LengthGroupedSampler
from transformers.trainer_utils import PredictionOutput, has_length
from transformers.utils import logging

from ..modeling_plant import PlantLabelAttention

logger = logging.get_logger(__name__)

# The three parts of a PLANT classifier that the recipe trains at their own rates and unfreezes in turn.
PARAMETER_GROUPS = ("head", "attention", "backbone")
_HEAD = re.compile(r"(^|\.)(score|matcher)\.")


def parameter_group(name: str) -> str:
    """The recipe group of a parameter, by its (possibly PEFT-wrapped) name: the head's output weights and biases
    (and the label tree's matcher), the planted attention (everything else of the label attention), or the
    backbone."""
    head = _HEAD.search(name)
    if head is None:
        return "backbone"
    if head.group(2) == "matcher" or name.rsplit(".", 1)[-1] in ("label_weights", "label_bias"):
        return "head"
    return "attention"


def parse_unfreeze_schedule(schedule: str | None) -> dict[str, float]:
    """`"attention=1,backbone=2"` -> the epoch at which each group starts training (absent groups: epoch 0)."""
    if not schedule:
        return {}
    result = {}
    for item in schedule.split(","):
        group, _, epoch = item.partition("=")
        group = group.strip()
        try:
            result[group] = float(epoch)
        except ValueError:
            group = None
        if group not in PARAMETER_GROUPS:
            raise ValueError(
                f"Bad unfreeze schedule item {item!r}: write group=epoch with group one of {PARAMETER_GROUPS} and "
                'epoch a number, e.g. "attention=1,backbone=2".'
            )
    return result


@dataclass
class PlantTrainingArguments(TrainingArguments):
    """`TrainingArguments` with the PLANT recipe's defaults and its discriminative learning rates.

    `learning_rate` is the head's rate; the planted attention trains at `planted_lr_fraction` of it, the backbone
    (LoRA adapters, or all its weights with `backbone_mode=full`) at `backbone_learning_rate`.
    """

    _argument_group_name: ClassVar[str] = "Fine-tuning: Trainer"
    # Trainer's options that do not change what a run computes (logging, saving, devices, the Hub): a run folder may
    # be continued with other values of them.
    volatile: ClassVar[tuple[str, ...]] = (
        "output_dir",
        "logging_dir",
        "logging_steps",
        "logging_strategy",
        "logging_first_step",
        "disable_tqdm",
        "dataloader_pin_memory",
        "report_to",
        "run_name",
        "save_total_limit",
        "per_device_eval_batch_size",
        "eval_accumulation_steps",
        "dataloader_num_workers",
        "local_rank",
        "resume_from_checkpoint",
        "hub_token",
        "push_to_hub",
        "hub_model_id",
        "hub_private_repo",
        "hub_strategy",
        "hub_always_push",
        "hub_revision",
        "project",
        "trackio_space_id",
        "trackio_bucket_id",
        "trackio_static_space_id",
        "logging_nan_inf_filter",
        "log_level",
        "log_level_replica",
    )

    output_dir: str | None = field(default="plant-run", metadata={"help": "The run's folder: every stage's output."})
    learning_rate: float = field(default=2e-3, metadata={"help": "Peak learning rate of the head."})
    planted_lr_fraction: float = field(
        default=0.5, metadata={"help": "The planted attention's learning rate as a fraction of the head's."}
    )
    backbone_learning_rate: float = field(
        default=1e-4, metadata={"help": "Peak learning rate of the backbone (its LoRA adapters, or all of it)."}
    )
    sparse_label_gradients: bool = field(
        default=True,
        metadata={
            "help": "The label tables (a row per label) of a shortlisting model, and of the ranker from "
            "shortlist_min_labels labels on, take sparse gradients and SparseAdam (lazy moments, no weight decay): a "
            "step moves only the rows it read. False: dense gradients and the optimizer of the other parameters "
            "(what FSDP and DeepSpeed always use)."
        },
    )
    unfreeze_schedule: str | None = field(
        default=None,
        metadata={
            "help": 'Gradual unfreezing: the epoch at which each group starts training, e.g. "attention=1,backbone=2"'
            " (the head trains from the start; unlisted groups too)."
        },
    )
    num_train_epochs: float = field(
        default=100.0,
        metadata={
            "help": "Ceiling of the fine-tuning epochs: training stops before it once the dev metric stops improving "
            "(see early_stopping_patience); lower it to cap the budget."
        },
    )
    early_stopping_patience: int | None = field(
        default=3,
        metadata={
            "help": "Stop once metric_for_best_model has not improved (by more than early_stopping_threshold) for "
            "this many evaluations; the best checkpoint is kept. None: train to num_train_epochs."
        },
    )
    early_stopping_threshold: float = field(
        default=1e-3, metadata={"help": "The least improvement of metric_for_best_model that counts as one."}
    )
    lr_scheduler_type: str = field(
        default="constant_with_warmup",
        metadata={"help": "Learning-rate schedule; the default suits a training length decided by early stopping."},
    )
    warmup_steps: float = field(default=50, metadata={"help": "Warm-up steps, or a share of all steps if < 1."})
    per_device_train_batch_size: int = field(default=16, metadata={"help": "Documents per device and step."})
    train_sampling_strategy: str = field(
        default="group_by_length",
        metadata={
            "help": "How training batches are drawn; grouping documents of similar length (the default) keeps the "
            "padding, which the head would score against every label, small."
        },
    )
    per_device_eval_batch_size: int = field(default=32, metadata={"help": "Documents per device in evaluation."})
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
    restore_callback_states_from_checkpoint: bool = field(
        default=True, metadata={"help": "On resume, restore callbacks' states (the early-stopping count)."}
    )

    def stopping_callbacks(self) -> list[TrainerCallback]:
        """The early-stopping callback these arguments ask for (none without a patience or without evaluation)."""
        if self.early_stopping_patience is None or self.eval_strategy == "no":
            return []
        return [EarlyStoppingCallback(self.early_stopping_patience, self.early_stopping_threshold)]

    def group_learning_rates(self) -> dict[str, float]:
        return {
            "head": self.learning_rate,
            "attention": self.learning_rate * self.planted_lr_fraction,
            "backbone": self.backbone_learning_rate,
        }


class XMCTrainer(Trainer):
    """A Trainer whose evaluation and prediction read the documents longest first, so that a batch's padding, which
    the head would score against every label, stays small, and give the metrics and the caller their outputs in the
    split's own order (`XMCComputeMetrics` matches predictions to the split's documents by position)."""

    def __init__(self, *args, stage: str | None = None, **kwargs):
        """`stage` names the bars and the one line per evaluation that replace Trainer's logged dicts."""
        super().__init__(*args, **kwargs)
        if stage is not None:
            self.remove_callback(PrinterCallback if self.args.disable_tqdm else ProgressCallback)
            self.add_callback(StageProgress(stage))
        self._eval_order: np.ndarray | None = None
        self._train_sampler: torch.utils.data.Sampler | None = None
        if self.compute_metrics is not None:
            compute_metrics = self.compute_metrics
            self.compute_metrics = lambda prediction: compute_metrics(self._prediction_in_split_order(prediction))

    def _get_train_sampler(self, train_dataset=None):
        sampler = super()._get_train_sampler(train_dataset)
        if type(sampler) is LengthGroupedSampler:
            seed = self.args.seed if self.args.data_seed is None else self.args.data_seed
            sampler = EpochSeededLengthGroupedSampler(sampler.batch_size, lengths=sampler.lengths, seed=seed)
        self._train_sampler = sampler
        return sampler

    def get_resumed_dataloader(self, dataloader, num_batches: int):
        # the batch-skipping loader of a run resumed inside an epoch does not always pass Trainer's set_epoch on
        if hasattr(self._train_sampler, "set_epoch"):
            self._train_sampler.set_epoch(int(self.state.epoch))
        return super().get_resumed_dataloader(dataloader, num_batches)

    def _get_eval_sampler(self, eval_dataset):
        if eval_dataset is None or not has_length(eval_dataset):
            return None
        lengths = document_lengths(eval_dataset)
        self._eval_order = None if lengths is None else np.argsort(-lengths, kind="stable")
        return SequentialSampler(eval_dataset) if self._eval_order is None else self._eval_order.tolist()

    def predict(self, test_dataset, ignore_keys: list[str] | None = None, metric_key_prefix: str = "test"):
        output = super().predict(test_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)
        return PredictionOutput(
            self._in_split_order(output.predictions), self._in_split_order(output.label_ids), output.metrics
        )

    def _prediction_in_split_order(self, prediction: EvalPrediction) -> EvalPrediction:
        return EvalPrediction(
            self._in_split_order(prediction.predictions),
            self._in_split_order(prediction.label_ids),
            self._in_split_order(prediction.inputs),
            self._in_split_order(prediction.losses),
        )

    def _in_split_order(self, values):
        """Outputs of the last evaluation or prediction (arrays, or tuples of them), back in the split's order."""
        if values is None or self._eval_order is None:
            return values
        if isinstance(values, tuple | list):
            return type(values)(self._in_split_order(value) for value in values)
        values = np.asarray(values)
        if values.ndim == 0:
            return values
        ordered = np.empty_like(values)
        ordered[self._eval_order] = values
        return ordered


class EpochSeededLengthGroupedSampler(LengthGroupedSampler):
    """Length-grouped batches drawn from the seed and the epoch alone: a run resumed inside an epoch sees the
    batches the uninterrupted run saw (drawn from the global generator, they would follow whatever it holds when the
    resumed epoch starts)."""

    def __init__(self, batch_size: int, lengths: list[int], seed: int):
        super().__init__(batch_size, lengths=lengths)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        self.generator = torch.Generator().manual_seed(self.seed + self.epoch)
        yield from super().__iter__()
        self.epoch += 1


class StageProgress(ProgressCallback):
    """Trainer's progress bars named after the recipe's stage, and for each evaluation one line of the dev metrics
    that matter (the selection metric first, marked when it is the best so far) in place of every logged dict."""

    SHOWN = ("P@1", "P@5", "PSP@5", "macro_f1")

    def __init__(self, stage: str):
        super().__init__()
        self.stage = stage

    def on_train_begin(self, args, state, control, **kwargs):
        self.current_step = 0
        if state.is_world_process_zero and not args.disable_tqdm:
            self.training_bar = tqdm(total=state.max_steps, desc=self.stage, unit="step", dynamic_ncols=True)

    def on_step_end(self, args, state, control, **kwargs):
        if self.training_bar is not None:
            super().on_step_end(args, state, control, **kwargs)

    def on_prediction_step(self, args, state, control, eval_dataloader=None, **kwargs):
        if args.disable_tqdm or not state.is_world_process_zero or not has_length(eval_dataloader):
            return
        if self.prediction_bar is None:
            self.prediction_bar = tqdm(
                total=len(eval_dataloader),
                desc=f"{self.stage}: dev" if self.training_bar is not None else self.stage,
                unit="batch",
                leave=self.training_bar is None,
                dynamic_ncols=True,
            )
        self.prediction_bar.update(1)

    def on_train_end(self, args, state, control, **kwargs):
        if self.training_bar is not None:
            super().on_train_end(args, state, control, **kwargs)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs or not any(key.startswith("eval_") for key in logs):
            return
        line = self.line(args, state, logs)
        (self.training_bar.write if self.training_bar is not None else print)(line)

    def line(self, args, state, logs: dict[str, float]) -> str:
        """`fine-tuning epoch 3/100: dev P@5 47.00 (best so far), P@1 65.00, ..., train loss 0.4507`."""
        from .evaluation import metric_name

        selected = (args.metric_for_best_model or "").removeprefix("eval_")
        names = [selected, *(name for name in self.SHOWN if name != selected)]
        parts = []
        for name in names:
            value = logs.get(f"eval_{name}")
            if isinstance(value, int | float):
                part = f"{metric_name(name)} {100 * value:.2f}"
                if name == selected and _improves(value, state.best_metric, args.greater_is_better):
                    part += " (best so far)"
                parts.append(part)
        losses = [entry["loss"] for entry in state.log_history if "loss" in entry]
        train = f", train loss {losses[-1]:.4g}" if losses else ""
        epoch = logs.get("epoch", state.epoch or 0)
        if not epoch:
            return f"{self.stage} before training: dev {', '.join(parts).replace(' (best so far)', '')}"
        ceiling = f"/{args.num_train_epochs:g}" if args.max_steps <= 0 else ""
        return f"{self.stage} epoch {epoch:g}{ceiling}: dev {', '.join(parts)}{train}"


def positive_weighted_loss(positive_weights: torch.Tensor) -> Callable[..., torch.Tensor]:
    """Trainer's `compute_loss_func` for binary cross-entropy whose positive term of label `l` weighs
    `positive_weights[l]`: the mean over documents and labels, as the model's own loss, taken over the whole
    accumulated batch (Trainer counts its `num_items_in_batch`, every target, across steps and processes)."""

    def loss(outputs, labels: torch.Tensor, num_items_in_batch=None) -> torch.Tensor:
        logits = outputs["logits"].float()
        weights = positive_weights.to(logits.device)
        total = F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype), pos_weight=weights, reduction="sum")
        return total / (labels.numel() if num_items_in_batch is None else num_items_in_batch)

    return loss


def _improves(value: float, best: float | None, greater_is_better: bool | None) -> bool:
    return best is None or (value > best if greater_is_better is not False else value < best)


def document_lengths(dataset) -> np.ndarray | None:
    """Each document's token count: from a dataset's own `lengths()` (cached states), or from its `input_ids`
    (flat or in chunks); None when it has neither."""
    if hasattr(dataset, "lengths"):
        return np.asarray(dataset.lengths())
    if isinstance(dataset, datasets.Dataset) and "input_ids" in dataset.column_names:
        return np.array([sum(map(len, ids)) if ids and isinstance(ids[0], list) else len(ids)
                         for ids in dataset["input_ids"]])  # fmt: skip
    return None


class PlantTrainer(XMCTrainer):
    """A Trainer whose optimizer gives the head, the planted attention and the backbone their own learning rates.

    The label tables (one row per label) of a model whose steps read only some of their rows (`sparse_label_tables`:
    a shortlisting model, a ranker at many labels) take sparse gradients and `torch.optim.SparseAdam` beside the
    dense optimizer, so that a step at a million labels moves only the rows it read; under
    DDP too (their gradients averaged over the processes here), not under FSDP or DeepSpeed.
    """

    _sparse_tables: tuple[nn.Parameter, ...] = ()

    def create_optimizer(self, model: nn.Module | None = None):
        if self.optimizer is None:
            model = self.model if model is None else model
            self._sparse_tables = tuple(self._switch_to_sparse_gradients(model))
            sparse_ids = {id(table) for table in self._sparse_tables}
            decay = set(self.get_decay_parameter_names(model))
            rates = self.args.group_learning_rates()
            groups: dict[tuple[str, bool, bool], list[nn.Parameter]] = {}
            for name, parameter in model.named_parameters():
                if parameter.requires_grad:
                    key = (parameter_group(name), name in decay, id(parameter) in sparse_ids)
                    groups.setdefault(key, []).append(parameter)
            optimizer_class, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, model)
            self.optimizer = optimizer_class(
                [
                    {"params": params, "lr": rates[group], "weight_decay": self.args.weight_decay if decays else 0.0}
                    for (group, decays, sparse), params in groups.items()
                    if not sparse
                ],
                **optimizer_kwargs,
            )
            if sparse_ids:
                tables = torch.optim.SparseAdam(
                    [{"params": params, "lr": rates[group]} for (group, _, sparse), params in groups.items() if sparse],
                    betas=(self.args.adam_beta1, self.args.adam_beta2),
                    eps=self.args.adam_epsilon,
                )
                self.optimizer = WithSparseAdam(self.optimizer, tables)
        return self.optimizer

    def _switch_to_sparse_gradients(self, model: nn.Module) -> list[nn.Parameter]:
        plant = model.get_base_model() if hasattr(model, "get_base_model") else model
        wanted = self.args.sparse_label_gradients and getattr(plant, "sparse_label_tables", False)
        if not wanted or self.is_fsdp_enabled or self.is_deepspeed_enabled:
            return []  # FSDP and DeepSpeed shard dense gradients only
        attention = [module for module in model.modules() if isinstance(module, PlantLabelAttention)]
        tables = [table for module in attention for table in module.enable_sparse_gradients() if table.requires_grad]
        if not tables:
            return []
        if self.args.world_size > 1:
            # DDP's reducer takes sparse gradients from embedding modules only: it leaves the tables to
            # `training_step`, which averages their gradients over the processes as DDP averages the others'.
            ids = {id(table) for table in tables}
            ignored = [name for name, parameter in model.named_parameters() if id(parameter) in ids]
            already = getattr(model, "_ddp_params_and_buffers_to_ignore", ())
            model._ddp_params_and_buffers_to_ignore = [*already, *ignored]
            for table in tables:
                torch.distributed.broadcast(table.data, src=0)  # as DDP starts every other parameter
        processes = f", averaged over {self.args.world_size} processes" if self.args.world_size > 1 else ""
        logger.info(f"label tables: sparse gradients and SparseAdam ({len(tables)} tables{processes})")
        return tables

    def training_step(self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch=None) -> torch.Tensor:
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self._sparse_tables and self.args.world_size > 1 and self.accelerator.sync_gradients:
            for table in self._sparse_tables:
                table.grad = average_sparse_gradient(table)
        return loss

    def _clip_grad_norm(self, model):
        if not self._sparse_tables:
            return super()._clip_grad_norm(model)
        self.accelerator.unscale_gradients()
        return clip_gradient_norm(model.parameters(), self.args.max_grad_norm)

    def _get_grad_norm(self, model, grad_norm=None):
        if grad_norm is None and self._sparse_tables:
            grad_norm = clip_gradient_norm(model.parameters(), float("inf"))
        return super()._get_grad_norm(model, grad_norm)


class WithSparseAdam(torch.optim.Optimizer):
    """A dense optimizer beside `torch.optim.SparseAdam` for the parameters that take sparse gradients, as one
    optimizer to Trainer: stepped, zeroed, scheduled (through the joined `param_groups`) and checkpointed together.
    SparseAdam is lazy (a row and its moments move only in the steps that read it) and has no weight decay."""

    def __init__(self, dense: torch.optim.Optimizer, sparse: torch.optim.SparseAdam):
        super().__init__([{"params": []}], {})
        self.dense, self.sparse = dense, sparse
        self.defaults = dense.defaults
        self._join_groups()

    def _join_groups(self) -> None:
        self.param_groups = [*self.dense.param_groups, *self.sparse.param_groups]

    def step(self, closure=None):
        loss = self.dense.step(closure)
        self.sparse.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.dense.zero_grad(set_to_none)
        self.sparse.zero_grad(set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {"dense": self.dense.state_dict(), "sparse": self.sparse.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.dense.load_state_dict(state_dict["dense"])
        self.sparse.load_state_dict(state_dict["sparse"])
        self._join_groups()  # loading replaced each optimizer's group dicts


def average_sparse_gradient(table: nn.Parameter) -> torch.Tensor:
    """The mean over the processes of a table's sparse gradient (the rows any process read), gathered as index and
    value lists, which every backend all-gathers (not every one all-reduces sparse tensors)."""
    import torch.distributed as dist

    shape, gradient = table.shape, table.grad
    if gradient is None:  # no row read here
        empty = (torch.empty(1, 0, dtype=torch.long, device=table.device), table.new_empty(0, *shape[1:]))
        gradient = torch.sparse_coo_tensor(*empty, shape)
    gradient = gradient.coalesce()
    indices, values = gradient.indices()[0], gradient.values()
    world = dist.get_world_size()
    counts = [torch.zeros(1, dtype=torch.long, device=values.device) for _ in range(world)]
    dist.all_gather(counts, torch.tensor([len(indices)], device=values.device))
    longest = int(max(counts))
    padded_indices = indices.new_zeros(longest)
    padded_indices[: len(indices)] = indices
    padded_values = values.new_zeros(longest, *values.shape[1:])
    padded_values[: len(values)] = values
    all_indices = [torch.empty_like(padded_indices) for _ in range(world)]
    all_values = [torch.empty_like(padded_values) for _ in range(world)]
    dist.all_gather(all_indices, padded_indices)
    dist.all_gather(all_values, padded_values)
    kept = [slice(0, int(count)) for count in counts]
    rows = torch.cat([part[keep] for part, keep in zip(all_indices, kept, strict=True)])
    gathered = torch.cat([part[keep] for part, keep in zip(all_values, kept, strict=True)])
    return torch.sparse_coo_tensor(rows.unsqueeze(0), gathered / world, shape).coalesce()


def clip_gradient_norm(parameters, max_norm: float) -> torch.Tensor:
    """`torch.nn.utils.clip_grad_norm_` over dense and sparse gradients alike (it refuses sparse ones): the 2-norm of
    all gradients together, returned, with every gradient scaled by `max_norm / norm` where the norm is larger."""
    parameters = [parameter for parameter in parameters if parameter.grad is not None]
    for parameter in parameters:
        if parameter.grad.is_sparse:
            parameter.grad = parameter.grad.coalesce()  # a row read twice in a step holds two entries until summed
    dense = [parameter.grad for parameter in parameters if not parameter.grad.is_sparse]
    norms = [torch.nn.utils.get_total_norm(dense)] if dense else []
    norms += [torch.linalg.vector_norm(p.grad.values()) for p in parameters if p.grad.is_sparse]
    total = torch.linalg.vector_norm(torch.stack(norms)) if norms else torch.tensor(0.0)
    if max_norm != float("inf"):
        scale = (max_norm / (total + 1e-6)).clamp(max=1.0)
        for parameter in parameters:
            parameter.grad.mul_(scale.to(parameter.grad.device))
    return total


def last_complete_checkpoint(folder: Path, remove_incomplete: bool = False) -> str | None:
    """The newest checkpoint that was written to the end (a run killed while saving leaves a partial one, which
    is removed when `remove_incomplete`)."""
    if not folder.is_dir():
        return None
    candidates = sorted(folder.glob("checkpoint-*"), key=lambda path: int(path.name.split("-")[-1]), reverse=True)
    for candidate in candidates:
        try:
            json.loads((candidate / "trainer_state.json").read_text())
            return str(candidate)
        except (FileNotFoundError, json.JSONDecodeError):
            if remove_incomplete:
                logger.warning(f"removing {candidate.name}: it was being written when the run stopped")
                shutil.rmtree(candidate)
    return None


def training_summary(trainer: Trainer, metric: str | None = None) -> dict[str, Any]:
    """How long a finished Trainer run trained and why it stopped, with the dev metric of each evaluation and the
    number of label tables it stepped with sparse gradients.

    `metric` defaults to the arguments' `metric_for_best_model`.
    """
    args, state = trainer.args, trainer.state
    metric = metric or args.metric_for_best_model
    key = metric if metric.startswith("eval_") else f"eval_{metric}"
    evaluations = [entry for entry in state.log_history if key in entry]
    best = next((entry for entry in evaluations if entry.get("step") == state.best_global_step), None)
    stopper = next((c for c in trainer.callback_handler.callbacks if isinstance(c, EarlyStoppingCallback)), None)
    if stopper is not None and stopper.early_stopping_patience_counter >= stopper.early_stopping_patience:
        threshold = f" by more than {stopper.early_stopping_threshold:g}" if stopper.early_stopping_threshold else ""
        reason = (
            f"early stopping: dev {metric} did not improve{threshold} for {stopper.early_stopping_patience} evaluations"
        )
    elif args.max_steps > 0:
        reason = f"step budget reached (max_steps {args.max_steps})"
    else:
        reason = f"epoch ceiling reached (num_train_epochs {args.num_train_epochs:g})"
    runtime = next((entry["train_runtime"] for entry in reversed(state.log_history) if "train_runtime" in entry), None)
    return {
        "epochs": round(float(state.epoch or 0.0), 2),
        "steps": state.global_step,
        "seconds": None if runtime is None else round(float(runtime), 1),
        "stopped": reason,
        "best_epoch": None if best is None else round(float(best["epoch"]), 2),
        f"best_dev_{metric}": None if best is None else best[key],
        f"dev_{metric}_by_epoch": [round(float(entry[key]), 6) for entry in evaluations],
        "sparse_label_tables": len(getattr(trainer, "_sparse_tables", ())),
    }


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
    "EpochSeededLengthGroupedSampler",
    "GradualUnfreezing",
    "PlantTrainer",
    "PlantTrainingArguments",
    "WithSparseAdam",
    "XMCTrainer",
    "average_sparse_gradient",
    "clip_gradient_norm",
    "document_lengths",
    "last_complete_checkpoint",
    "parameter_group",
    "parse_unfreeze_schedule",
    "positive_weighted_loss",
    "training_summary",
]
