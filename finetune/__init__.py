"""LoRA fine-tuning with modality-balancing recipes."""
