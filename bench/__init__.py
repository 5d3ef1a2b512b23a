"""Throughput of every stage beside its baseline and its limit (issue 4)."""
