"""Reports from summary.json alone (no torch): HTML, Markdown, model card, plots, comparisons."""
