"""Evaluation: metrics, the one evaluation loop (through the codes), and the metrics that need outside weights."""
