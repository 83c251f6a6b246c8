"""Trainer for PLANT (optimizer groups, gradual unfreezing, stopping record) and the XMC metrics it reports."""

from .evaluation import (
    HEADLINE_METRICS,
    XMCComputeMetrics,
    evaluate_prediction_file,
    flatten_report,
    format_metrics_table,
    headline_metrics,
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
    "headline_metrics",
    "plot_frequency_buckets",
    "top_k_logits",
    "write_report",
]
