"""Evaluation against human labels for `vila-tf evaluate`: the label readers (AVA.txt, path,score
CSV), the metrics with their bootstrap intervals, and the written report (metrics.json, summary.md,
plots)."""
