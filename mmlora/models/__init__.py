"""Models: the families (families/), loading a checkpoint and its processor (loading.py,
processor.py), what saved folders record (processor_files.py), LoRA (lora.py), adapters
(adapter_fit.py, adapter_loading.py, merge.py), the tiny offline twins (tiny.py), and
`mmlora plan`'s counts and memory estimate (plan.py, memory.py, published.py)."""
