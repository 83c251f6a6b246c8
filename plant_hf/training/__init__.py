"""The PLANT recipe around Trainer: evaluation today; data -> MIG -> ranker -> plant -> Trainer as it grows."""

from .evaluation import (
    HEADLINE_METRICS,
    XMCComputeMetrics,
    evaluate_prediction_file,
    flatten_report,
    format_metrics_table,
    plot_frequency_buckets,
    top_k_logits,
    write_report,
)

__all__ = [
    "HEADLINE_METRICS",
    "XMCComputeMetrics",
    "evaluate_prediction_file",
    "flatten_report",
    "format_metrics_table",
    "plot_frequency_buckets",
    "top_k_logits",
    "write_report",
]
