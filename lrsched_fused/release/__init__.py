"""Gradient release: the optimizer step inside backward, bucket by bucket, with the in-kernel schedule.

>>> handle = attach(model, opt, bucket_bytes=25 * 2**20)       # doctest: +SKIP
>>> for x, y in data:                                           # doctest: +SKIP
...     loss_fn(model(x), y).backward()    # updates the parameters and frees their gradients; no opt.step()
>>> handle.detach()                        # opt.step() works again, from the same state and clock  # doctest: +SKIP

Gradients are the other big block of training memory. Stepping each parameter as soon as its gradient
is ready and then freeing that gradient (torch's "optimizer in backward") keeps a few gradients alive
instead of all of them. Here the lr comes from the device clock inside the kernel, so the update needs no
host work per parameter, and parameters are updated in *buckets* (one fused launch of
:func:`lrsched_fused.functional.adamw` / :func:`~lrsched_fused.functional.lamb` per bucket), not one by one.

How a step runs (``docs/gradient_release.md`` has the full story):

* **Buckets are fixed at attach**, from global metadata only: the optimizer's parameters in reverse
  order (backward produces gradients roughly last layer first), split by what must share a launch (param
  dtype, state dtype, master weights, amsgrad), cut whenever a bucket's gradients reach ``bucket_bytes``
  (global, unsharded sizes). Every rank of an FSDP2 job therefore builds the same buckets, uneven or
  empty shards included, and LAMB's per-bucket all-reduce of its norm sums matches across ranks.
* **A post-accumulate-grad hook** on every parameter marks its gradient ready; the hook that completes a
  bucket updates the whole bucket (one launch) and sets those gradients to ``None``.
* **The end of backward** (a callback queued on the autograd engine, run after FSDP2's own final callback)
  updates what is left of incomplete buckets (parameters that got no gradient are not updated and their
  step count does not advance, as in ``step()``), then ends the step once: one ``functional.advance``
  (through :meth:`FusedOptimizer.finish_step <lrsched_fused.optim.base.FusedOptimizer.finish_step>`)
  advances the clock and the counts of the tensors updated.
* **Backward passes are counted** by a hook on the model's forward outputs, not by gradient hooks
  (under FSDP2's ``set_requires_gradient_sync(False)`` the gradient hooks fire only on sync
  micro-batches): with ``accumulation_steps=k`` gradients accumulate over ``k`` backward passes and the
  ``k``-th updates.

Refused at attach, with the reason: LAMB's ``max_grad_norm`` and ``skip_nonfinite=True`` (both need every
gradient before any update), a GradScaler's ``found_inf`` / ``grad_scale`` (same), DDP and FSDP1 models
(DDP's hooks fire before its all-reduce; FSDP1 flattens tensors), duplicated parameters. While attached,
``optimizer.step()`` raises (the update already happened in backward).
"""

from ._handle import DEFAULT_BUCKET_BYTES, ReleaseHandle, attach

__all__ = ["attach", "ReleaseHandle", "DEFAULT_BUCKET_BYTES"]
