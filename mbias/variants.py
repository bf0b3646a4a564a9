"""The modality-ablated inputs every probe and recipe is built from, named once.

A variant is a pair (image, question). The image is kept, replaced by a baseline picture (``BASELINE``: the
configured kind; probes may name a kind instead, e.g. "blank", "noise", "swap"), or removed (a prompt without
image tokens). The question is kept or masked (its tokens replaced by the text baseline; chat-template text is
never touched). The seed papers' "image-only" input is ``QUESTION_MASKED`` and their "text-only" input is
``IMAGE_MASKED``; the names here say what is taken away, so they cannot be read the wrong way round.
"""

KEEP, MASK, REMOVED, BASELINE = "keep", "mask", "removed", "baseline"

FULL = (KEEP, KEEP)
QUESTION_MASKED = (KEEP, MASK)  # what the image alone says
IMAGE_MASKED = (BASELINE, KEEP)  # what the question alone says, beside a baseline picture
BOTH_MASKED = (BASELINE, MASK)
IMAGE_REMOVED = (REMOVED, KEEP)  # what the question alone says, with no image tokens at all

SHAPLEY_VARIANTS = (FULL, QUESTION_MASKED, IMAGE_MASKED, BOTH_MASKED)  # the 2-player game's four coalitions
