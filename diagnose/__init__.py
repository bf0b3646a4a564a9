"""Audit pipeline: probes x dataset -> results.jsonl -> summary.json."""
