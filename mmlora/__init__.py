"""mmlora: LoRA fine-tuning of vision-language models for captioning and VQA."""

__version__ = "0.1.0"
