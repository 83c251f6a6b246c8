"""Planting: MIG tables, learning-to-rank pretraining of the label attention, and its transplant."""

from .mig import ArtifactMismatchError, MIGConfig, MIGTable, build_mig_table, tokenizer_fingerprint

__all__ = ["ArtifactMismatchError", "MIGConfig", "MIGTable", "build_mig_table", "tokenizer_fingerprint"]
