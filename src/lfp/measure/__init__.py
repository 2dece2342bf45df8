"""Measurement shared by every task kind: probes, metrics, triples, controls and their statistics."""
