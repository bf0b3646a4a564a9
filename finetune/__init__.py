"""LoRA fine-tuning with modality-balancing recipes.

``mbias.finetune`` is this package and, called, ``mbias.finetune.api.finetune``: ``mbias.finetune(model,
processor, data, recipe="poe", **training_args)`` fine-tunes while ``mbias.finetune.config`` and the other modules
stay importable under the same name (a subpackage attribute would otherwise shadow a function of that name).
"""

import sys
import types


class _CallablePackage(types.ModuleType):
    def __call__(self, *args, **kwargs):
        from mbias.finetune.api import finetune

        return finetune(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
