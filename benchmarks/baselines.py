"""The baseline head the benchmarks compare PLANT with."""

import torch
from transformers import PreTrainedConfig
from transformers.modeling_outputs import SequenceClassifierOutput


class MeanPooledLinearHead(torch.nn.Module):
    """The usual multi-label baseline: the mean of the token states, one linear layer, binary cross-entropy."""

    def __init__(self, hidden_size: int, num_labels: int):
        super().__init__()
        self.classifier = torch.nn.Linear(hidden_size, num_labels)
        self.config = PreTrainedConfig(num_labels=num_labels)

    def forward(self, token_states, attention_mask, input_ids=None, labels=None) -> SequenceClassifierOutput:
        mask = attention_mask.unsqueeze(-1).float()
        pooled = (token_states.float() * mask).sum(1) / mask.sum(1).clamp(min=1)
        logits = self.classifier(pooled)
        loss = None if labels is None else torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)
        return SequenceClassifierOutput(loss=loss, logits=logits)
