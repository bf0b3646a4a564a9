"""Probes: one measurement of language-vs-vision reliance per module, registered by name."""
