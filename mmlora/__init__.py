"""mmlora: LoRA fine-tuning of vision-language models for captioning and VQA."""

from mmlora.models.torchvision_check import check_before_transformers as _check_before_transformers

__version__ = "0.1.0"

# transformers would take an installed torchvision that does not import for usable.
_check_before_transformers()
