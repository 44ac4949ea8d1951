"""Checks a training run can pass before anything slow happens (no torch import, no pre-scan).

A missing logging package or a QLoRA recipe on a machine without bitsandbytes used to fail
seconds to minutes into `mmlora train`, after the data pre-scan had written data_report.json;
these checks look only at the recipe and at which packages are installed (`find_spec`, which
imports nothing), so they answer at once.
"""

from __future__ import annotations

import difflib
import importlib.util

from mmlora.config.schema import Recipe
from mmlora.errors import MmloraError

# `train.report_to` names the Trainer accepts (transformers.integrations INTEGRATION_TO_CALLBACK),
# with the modules each needs and what to pip install. Kubeflow needs no package (an env var).
REPORT_PACKAGES: dict[str, tuple[tuple[str, ...], str]] = {
    "tensorboard": (("tensorboard", "tensorboardX"), "tensorboard"),
    "wandb": (("wandb",), "wandb"),
    "mlflow": (("mlflow",), "mlflow"),
    "comet_ml": (("comet_ml",), "comet-ml"),
    "neptune": (("neptune",), "neptune"),
    "trackio": (("trackio",), "trackio"),
    "clearml": (("clearml",), "clearml"),
    "codecarbon": (("codecarbon",), "codecarbon"),
    "dagshub": (("dagshub",), "dagshub mlflow"),
    "flyte": (("flytekit",), "flytekit"),
    "dvclive": (("dvclive",), "dvclive"),
    "swanlab": (("swanlab",), "swanlab"),
    "azure_ml": (("azureml",), "azureml-core"),
    "kubeflow": ((), ""),
}
SPECIAL_REPORT_TARGETS = ("auto", "none", "all")


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a broken or half-uninstalled package
        return False


def check_report_to(targets: list[str]) -> None:
    """Every `train.report_to` entry is a known integration whose package is installed."""
    for name in targets:
        if name in SPECIAL_REPORT_TARGETS:
            continue
        if name not in REPORT_PACKAGES:
            close = difflib.get_close_matches(name, list(REPORT_PACKAGES), n=1, cutoff=0.6)
            hint = f"Did you mean '{close[0]}'? " if close else ""
            raise MmloraError(f"train.report_to: unknown target '{name}'. {hint}Use auto, none or any of "
                              f"{', '.join(REPORT_PACKAGES)}.")
        modules, pip_name = REPORT_PACKAGES[name]
        if modules and not any(_installed(module) for module in modules):
            raise MmloraError(f"train.report_to={name}, but {name} is not installed: `pip install {pip_name}`, "
                              f"or drop it from train.report_to (e.g. train.report_to=none).")


def check_quantization(recipe: Recipe) -> None:
    """model.quantization (QLoRA) needs bitsandbytes and a CUDA GPU: refuse before the pre-scan."""
    mode = recipe.model.quantization
    if mode == "none":
        return
    if not _installed("bitsandbytes"):
        raise MmloraError(f"model.quantization={mode} (QLoRA) needs bitsandbytes and a CUDA GPU; bitsandbytes "
                          "is not installed (`pip install bitsandbytes` on a CUDA machine). Without a GPU use "
                          "model.quantization=none.")
    import torch  # only reached when bitsandbytes is there, i.e. on a machine meant for QLoRA

    if not torch.cuda.is_available():
        raise MmloraError(f"model.quantization={mode} (QLoRA) needs a CUDA GPU: bitsandbytes quantises "
                          "weights on the GPU and none is visible. On CPU use model.quantization=none.")


def check_fsdp_device() -> None:
    """Under an FSDP launch (ACCELERATE_USE_FSDP) without a GPU, the config must be FSDP2: mmlora
    shards CPU processes with FSDP2 (mmlora/training/fsdp.py); FSDP1 cannot run there
    (sync_module_states needs a GPU) and accelerate would otherwise quietly run plain DDP."""
    from mmlora.training.fsdp import FSDP1_ON_CPU, fsdp_requested, fsdp_version_requested

    if not fsdp_requested() or fsdp_version_requested() == 2:
        return
    import torch  # only reached under an FSDP1 launch

    if not torch.cuda.is_available():
        raise MmloraError(FSDP1_ON_CPU.format(version=fsdp_version_requested()))


def check_activation_checkpointing(recipe: Recipe) -> None:
    """train.gradient_checkpointing and FSDP's own activation checkpointing are two ways of doing
    one thing; the HF Trainer refuses the pair with a ValueError once the model is loaded.
    mmlora's is the one its memory planner and frozen-vision-tower path are built and tested
    with (and what recipes/accelerate/fsdp.yaml chooses), so that is the one kept."""
    from mmlora.training.fsdp import fsdp_activation_checkpointing_requested

    if recipe.train.gradient_checkpointing and fsdp_activation_checkpointing_requested():
        raise MmloraError("train.gradient_checkpointing=true and the accelerate config's "
                          "fsdp_activation_checkpointing: true both checkpoint activations, and the two cannot "
                          "be combined: set fsdp_activation_checkpointing: false in the accelerate config (as "
                          "recipes/accelerate/fsdp.yaml does), or set train.gradient_checkpointing=false to let "
                          "FSDP checkpoint instead.")


def check_before_training(recipe: Recipe) -> None:
    """Everything about a recipe that can be refused without loading data or weights."""
    check_report_to(recipe.train.report_to)
    check_quantization(recipe)
    check_fsdp_device()
    check_activation_checkpointing(recipe)
    if recipe.train.liger and not _installed("liger_kernel"):
        raise MmloraError("train.liger=true needs the liger-kernel package (`pip install liger-kernel`) and a "
                          "CUDA GPU; set train.liger=false otherwise.")
