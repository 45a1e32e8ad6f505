"""Evaluation against human labels: label readers, metrics and the report."""
