"""FSDP on CPU processes (gloo): accelerate 1.15 builds the FSDP plugin there but runs DDP.

`AcceleratorState` turns on `DistributedType.FSDP` only for GPU-type backends (MULTI_GPU,
MULTI_XPU, ...); on MULTI_CPU it drops the plugin that `ACCELERATE_USE_FSDP` asked for, and the
FSDP config would quietly train unsharded. FSDP2 (`torch.distributed.fsdp.fully_shard`) itself
shards on CPU with gloo, and accelerate's FSDP2 code (fsdp2_prepare_model, the state-dict and
checkpoint helpers) is device-agnostic, so mmlora finishes the switch accelerate stops short
of: the same plugin, built from the same FSDP_* variables, on the same shared state. Then a CPU
cluster (and the 2-process test) shards for real. FSDP1 on CPU cannot (its
sync_module_states needs a GPU), so it is refused in one line by preflight.check_fsdp_device.
"""

from __future__ import annotations

import os

from mmlora.errors import MmloraError

FSDP1_ON_CPU = ("The FSDP config asks for fsdp_version: {version}, which needs GPUs, and none is visible. "
                "On CPU processes use fsdp_version: 2 (recipes/accelerate/fsdp.yaml).")


def fsdp_requested() -> bool:
    """Whether the launch asked for FSDP (`accelerate launch --config_file ...fsdp.yaml` sets it)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def fsdp_version_requested() -> int:
    """The FSDP version the launch asked for (FSDP_VERSION; accelerate's default is 1)."""
    return int(os.environ.get("FSDP_VERSION", "1"))


def fsdp_activation_checkpointing_requested() -> bool:
    """Whether the FSDP launch asked FSDP itself to checkpoint activations (the accelerate config's
    `fsdp_activation_checkpointing: true`, which `accelerate launch` passes as
    FSDP_ACTIVATION_CHECKPOINTING; read with accelerate's own truth values)."""
    value = os.environ.get("FSDP_ACTIVATION_CHECKPOINTING", "false").strip().lower()
    return fsdp_requested() and value in ("y", "yes", "t", "true", "on", "1")


def shard_cpu_processes(accelerator) -> bool:
    """Switch a multi-process CPU run launched with an FSDP2 config from DDP to FSDP2.

    Call right after the Accelerator is built and before anything is prepared: the model and
    optimizer are wrapped by `prepare`, which reads `distributed_type`. Returns whether it
    switched (False on GPUs, where accelerate has done it, and without an FSDP launch).
    """
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    state = accelerator.state
    if not fsdp_requested() or state.distributed_type != DistributedType.MULTI_CPU:
        return False
    plugin = FullyShardedDataParallelPlugin()  # reads FSDP_* exactly as accelerate's own construction
    if plugin.fsdp_version != 2:  # preflight.check_fsdp_device refuses this first in `mmlora train`
        raise MmloraError(FSDP1_ON_CPU.format(version=plugin.fsdp_version))
    if state.mixed_precision != "no":
        plugin.set_mixed_precision(state.mixed_precision)
    state.fsdp_plugin = plugin
    state.distributed_type = DistributedType.FSDP
    # accelerate keeps both shared states in step (end of AcceleratorState.__init__)
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    return True


def gathered_trainable_state(model) -> dict:
    """The trainable weights (the adapter) of an FSDP-sharded `model`, whole and on the CPU of
    rank 0; an empty dict on the other ranks. A collective: every rank must call it.

    Only trainable parameters are gathered (buffers too, which PEFT's save drops): the
    Trainer's FULL_STATE_DICT save would gather the whole frozen base onto rank 0 for an
    adapter of a few MB, and its SHARDED_STATE_DICT save writes no adapter at all.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)
    return get_model_state_dict(model, options=options)


def sharding_line(model) -> str | None:
    """What this process holds of an FSDP2-sharded `model` (parameters are DTensors), as one
    console line; None when nothing is sharded (single process, DDP, FSDP1's flat parameters)."""
    from torch.distributed.tensor import DTensor

    params = list(model.parameters()) if model is not None else []
    sharded = [p for p in params if isinstance(p, DTensor)]
    if not sharded:
        return None
    full = sum(p.numel() for p in params)
    local = sum(p.to_local().numel() if isinstance(p, DTensor) else p.numel() for p in params)
    return (f"FSDP2: {len(sharded)} of {len(params)} weight tensors sharded over {sharded[0].device_mesh.size()} "
            f"processes; this process holds {local:,} of {full:,} values ({100 * local / full:.1f}%)")
