"""What gradient release refuses, and why (each reason says what needs every gradient of the step)."""

from __future__ import annotations

import torch

from lrsched_fused.optim.base import FusedOptimizer

__all__ = ["refusal", "refuse_model", "STEP_WHILE_ATTACHED"]

WHY_ALL_GRADS = ("gradient release updates each bucket as soon as its gradients are ready and frees them, so no "
                 "quantity that needs every gradient of the step can be known before the first update")

STEP_WHILE_ATTACHED = (
    "optimizer.step() was called while gradient release is attached (lrsched_fused.release.attach): the update "
    "already ran inside backward, bucket by bucket, and the gradients were freed. Drop the step() call (and "
    "zero_grad), or call handle.detach() first to step normally again. If torch.amp.GradScaler.step() called it: "
    "GradScaler's found_inf protocol needs every gradient before any update, which gradient release cannot wait "
    "for; train without a scaler (bf16 autocast needs none) or without release")


def refusal(optimizer: FusedOptimizer) -> str | None:
    """Why ``optimizer`` cannot step inside backward (``None``: it can). Checked at attach and every step."""
    options = optimizer.options
    if options.get("max_grad_norm") is not None:
        return (f"FusedLAMB(max_grad_norm={options['max_grad_norm']}) clips by the global norm of all gradients: "
                f"{WHY_ALL_GRADS}. Use max_grad_norm=None (LAMB's per-tensor trust ratio already bounds each "
                "layer's step) or step normally")
    if options.get("skip_nonfinite"):
        return (f"skip_nonfinite=True skips a step when any gradient is inf or NaN: {WHY_ALL_GRADS} (the buckets "
                "updated before a bad gradient arrives cannot be skipped). Use skip_nonfinite=False or step normally")
    for name in ("found_inf", "grad_scale"):
        if getattr(optimizer, name, None) is not None:
            return (f"optimizer.{name} is set: a torch.amp.GradScaler drives this optimizer. Its found_inf "
                    f"protocol skips a step when any gradient overflowed: {WHY_ALL_GRADS}, and its grad_scale "
                    "changes from step to step. Train without a scaler (bf16 autocast needs none) or step normally")
    return None


def refuse_model(model: torch.nn.Module) -> None:
    from torch.nn.parallel import DistributedDataParallel

    for name, module in model.named_modules():
        where = f"the model{f' (submodule {name!r})' if name else ''}"
        if isinstance(module, DistributedDataParallel):
            raise ValueError(
                f"{where} is wrapped in DistributedDataParallel: DDP's all-reduce of a gradient runs after the "
                "gradient hooks that gradient release uses (it averages the gradients across ranks when its "
                "bucket is complete and writes them back at the end of backward), so the update would use the "
                "local, unaveraged gradient. Use FSDP2 (torch.distributed.fsdp.fully_shard; its hooks fire after "
                "the reduce-scatter) or step normally")
        if type(module).__name__ == "FullyShardedDataParallel":
            raise ValueError(
                f"{where} is wrapped in FSDP1 (FullyShardedDataParallel), whose flat parameters do not run the "
                "parameters' gradient hooks after its reduce-scatter. Use FSDP2 (torch.distributed.fsdp."
                "fully_shard) or step normally")
