"""mmlora: LoRA fine-tuning of vision-language models for captioning and VQA."""

from mmlora.torchvision_check import torchvision_usable as _torchvision_usable

__version__ = "0.1.0"

# Before transformers is imported anywhere: it would take an unimportable torchvision for usable.
_torchvision_usable()
