"""mbias: measure and reduce language-vs-vision modality bias in HuggingFace multimodal LLMs.

Importing ``mbias`` is cheap (no torch); heavy modules load on first use.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
