"""The handle of one gradient-release attachment: its hooks, buffers and per-step bookkeeping."""

from __future__ import annotations

import warnings
import weakref
from operator import is_
from typing import Any, Mapping

import torch
from torch.autograd import Variable

from lrsched_fused import functional as F
from lrsched_fused._validate import check_count
from lrsched_fused.kernels import layout as L
from lrsched_fused.optim._distributed import make_shard_allreduce
from lrsched_fused.optim.base import FusedOptimizer
from lrsched_fused.optim.plan import grad_of
from lrsched_fused.optim.step_inputs import check_tokens

from ._buckets import Bucket, make_buckets
from ._checks import STEP_WHILE_ATTACHED, refuse_model, refusal

__all__ = ["attach", "ReleaseHandle", "DEFAULT_BUCKET_BYTES"]

#: DDP's default bucket size (25 MiB of gradients)
DEFAULT_BUCKET_BYTES = 25 * 2**20

#: optimizer -> a weak reference to its attached handle (one attachment per optimizer). The parameters' hooks
#: hold the handle, which holds the parameters: call detach() before dropping a model that is still attached
_ATTACHED: "weakref.WeakKeyDictionary[FusedOptimizer, weakref.ref]" = weakref.WeakKeyDictionary()


def _grad_tensors(out: Any, found: list[torch.Tensor], depth: int = 0) -> list[torch.Tensor]:
    """The tensors of a forward output (tensors, sequences, mappings, e.g. HF ModelOutput) that need grad."""
    if isinstance(out, torch.Tensor):
        if out.requires_grad:
            found.append(out)
    elif depth < 8 and isinstance(out, (list, tuple)):
        for item in out:
            _grad_tensors(item, found, depth + 1)
    elif depth < 8 and isinstance(out, Mapping):
        for item in out.values():
            _grad_tensors(item, found, depth + 1)
    return found


def _outside_backward() -> bool:
    task = getattr(torch._C, "_current_graph_task_id", None)
    return task is not None and task() == -1


class ReleaseHandle:
    """What :func:`attach` returns: the hooks of one (model, optimizer) pair. :meth:`detach` removes them."""

    def __init__(self, model: torch.nn.Module, optimizer: FusedOptimizer, bucket_bytes: int,
                 accumulation_steps: int) -> None:
        self.model, self.optimizer = model, optimizer
        self.bucket_bytes, self.accumulation_steps = bucket_bytes, accumulation_steps
        self._lamb = optimizer.hyperparams is F.LambHyper
        groups = optimizer.param_groups
        self._all_params = [p for g in groups for p in g["params"]]
        entries = [(gi, p) for gi, g in enumerate(groups) for p in g["params"] if p.requires_grad]
        if len({id(p) for _, p in entries}) < len(entries):
            raise ValueError("a parameter is listed twice in the optimizer's param groups: step() updates it once per "
                             "listing, gradient release once per gradient; list each parameter once")
        self._tables = optimizer.group_tables()        # validates the groups; creates the clock
        self._amsgrad = [bool(g.get("amsgrad", False)) for g in groups]
        self._options = {k: optimizer.options[k] for k in ("backend", "state_dtype", "master_weights", "quant_block",
                                                            "quant_min_numel", "master_bits", "stochastic_rounding")}
        self._fmt = optimizer.state_format
        self._salt = {id(p): i for i, p in enumerate(self._all_params)}  # as step(): the stochastic-rounding salt
        self.buckets: list[Bucket] = make_buckets(optimizer, entries, bucket_bytes=bucket_bytes,
                                                  amsgrad=self._amsgrad, lamb=self._lamb)
        self._order = [p for b in self.buckets for p in b.params]
        self._slot = {id(p): (b, j) for b in self.buckets for j, p in enumerate(b.params)}
        device = optimizer.clock.device
        n = len(self._order)
        self._steps = torch.zeros(n, dtype=torch.float32, device=device)
        self._group_index = torch.tensor([gi for b in self.buckets for gi in b.group_rows], dtype=torch.int64,
                                         device=device)
        self._norms = torch.zeros(n, L.NORM_COLS, dtype=torch.float32, device=device) if self._lamb else None
        self._states: list[dict | None] = [None] * n
        self._adopt_states()
        # per-step bookkeeping
        self._passes = 0          # backward passes since the last update (the current one included)
        self._active = False      # a backward pass is running (its end-of-backward callback is queued)
        self._stepping = False    # ... and it is the one that updates
        self._tokens: int | torch.Tensor | None = None
        self._hooks = [p.register_post_accumulate_grad_hook(self._on_grad) for p in self._order]
        self._hooks.append(model.register_forward_hook(self._on_forward))
        self._hooks.append(optimizer.register_step_pre_hook(self._refuse_step))
        self.attached = True

    # ------------------------------------------------------------------------------------------------
    # setup
    # ------------------------------------------------------------------------------------------------
    def _adopt_states(self) -> None:
        """Take over the existing states: converted as step() would, their update counts copied into this
        handle's buffer and ``state["step"]`` made views of it (one buffer, one advance per step)."""
        state = self.optimizer.state
        rows = [i for i, p in enumerate(self._order) if state.get(p)]
        if rows:
            states = self.optimizer.init_state([self._order[i] for i in rows])
            counts = torch.stack([st["step"].detach().reshape(()).to(self._steps.device, torch.float32)
                                  for st in states])
            self._steps[torch.tensor(rows, device=self._steps.device)] = counts
            for i, st in zip(rows, states):
                st["step"] = self._steps[i]
                self._states[i] = st
        for b in self.buckets:
            b.batch = None

    def _check_unchanged(self) -> None:
        """At the start of each updating pass: the optimizer is still the one the buckets were made for."""
        opt = self.optimizer
        flat = [p for g in opt.param_groups for p in g["params"]]
        if len(flat) != len(self._all_params) or not all(map(is_, flat, self._all_params)):
            raise RuntimeError("the optimizer's parameters changed since gradient release was attached "
                               "(add_param_group, a load that reorders groups): call handle.detach() and attach again")
        if ([bool(g.get("amsgrad", False)) for g in opt.param_groups] != self._amsgrad
                or any(opt.options[k] != v for k, v in self._options.items())):
            raise RuntimeError("amsgrad, backend, state_dtype or master_weights changed since gradient release was "
                               "attached (e.g. by load_state_dict): call handle.detach() and attach again")
        why = refusal(opt)
        if why is not None:
            raise RuntimeError(f"gradient release cannot continue: {why}")
        state = opt.state
        if not all(map(is_, map(state.get, self._order), self._states)) or any(
                st is not None and getattr(st.get("step"), "_base", None) is not self._steps for st in self._states):
            self._states = [None] * len(self._order)  # a state was loaded or replaced: adopt the new ones
            self._adopt_states()

    def _ensure_states(self, bucket: Bucket, members: list[int]) -> list[dict]:
        """The state dicts of ``bucket.params[j]`` for ``j`` in ``members``, created on first use."""
        rows = [bucket.lo + j for j in members]
        missing = [i for i in rows if self._states[i] is None]
        if missing:
            states = self.optimizer.init_state([self._order[i] for i in missing])
            for i, st in zip(missing, states):
                st["step"] = self._steps[i]      # a new state counts 0, as its slot does
                self._states[i] = st
        return [self._states[i] for i in rows]

    # ------------------------------------------------------------------------------------------------
    # hooks
    # ------------------------------------------------------------------------------------------------
    def _refuse_step(self, optimizer, args, kwargs) -> None:
        raise RuntimeError(STEP_WHILE_ATTACHED)

    def _on_forward(self, module, args, output) -> None:
        if not torch.is_grad_enabled():
            return
        if self._active and _outside_backward():
            self._abandon()
        for t in _grad_tensors(output, []):
            t.register_hook(self._on_output_grad)

    def _on_output_grad(self, grad: torch.Tensor) -> None:
        self._begin_pass()

    def _begin_pass(self) -> None:
        """The first hook of a backward pass: count it, and queue the end-of-backward callback."""
        if self._active:
            return
        stepping = self._passes + 1 >= self.accumulation_steps
        if stepping:
            self._prepare_step()                 # may raise: then nothing was counted or queued
        self._passes += 1
        self._stepping = stepping
        self._active = True
        Variable._execution_engine.queue_callback(self._end_of_backward)

    def _prepare_step(self) -> None:
        self._check_unchanged()
        opt = self.optimizer
        uses_tokens = any(g.get("schedule") is not None and g["schedule"].unit == "tokens" for g in opt.param_groups)
        if uses_tokens and self._tokens is None:
            raise ValueError("a param group's schedule counts tokens (unit='tokens'): call handle.set_tokens(n) with "
                             "the tokens of this step before the backward pass that updates")
        self._tables = opt.group_tables()

    def _on_grad(self, p: torch.Tensor) -> None:
        self._begin_pass()                       # backward through something other than the model's outputs
        if not self._stepping:
            return                               # accumulating: the gradient stays in p.grad
        bucket, j = self._slot[id(p)]
        if bucket.ready[j]:
            return
        bucket.ready[j] = True
        bucket.count += 1
        if bucket.count == len(bucket.params):
            self._update(bucket, None)

    def _end_of_backward(self) -> None:
        # queued again once: it then runs after every callback queued during this backward, FSDP2's final
        # callback included (which may reduce-scatter, and so call the gradient hooks of, the last group)
        Variable._execution_engine.queue_callback(self._finish_pass)

    def _finish_pass(self) -> None:
        self._active = False
        if not self._stepping:
            return
        self._stepping = False
        self._passes = 0
        updated: list[int] = []
        whole = True
        for b in self.buckets:
            if b.count == len(b.params):
                updated.extend(range(b.lo, b.hi))
            else:
                whole = False
                # the members whose hook fired, and those that hold a gradient accumulated by an earlier pass
                # of this step but got none in this one (their hook did not fire now)
                members = [j for j, (r, p) in enumerate(zip(b.ready, b.params)) if r or p.grad is not None]
                if members:
                    self._update(b, members)
                    updated.extend(b.lo + j for j in members)
            b.ready = [False] * len(b.params)
            b.count = 0
        tokens, self._tokens = self._tokens, None
        if not updated:
            return                               # no gradient at all: as step(), nothing advances
        if whole:
            self.optimizer.finish_step(self._tables, self._steps, tokens=tokens)
        else:
            self.optimizer.finish_step(self._tables, self._steps[:0], tokens=tokens)
            self._steps.index_add_(0, torch.tensor(updated, device=self._steps.device),
                                   torch.ones(len(updated), device=self._steps.device))

    def _abandon(self) -> None:
        """A backward pass ended without its end-of-backward callback (it raised)."""
        if self._stepping and any(b.count for b in self.buckets):
            warnings.warn("a backward pass raised after gradient release had updated some buckets of its step: "
                          "those updates stay, their clock and step counts did not advance", RuntimeWarning,
                          stacklevel=3)
        for b in self.buckets:
            b.ready = [False] * len(b.params)
            b.count = 0
        self._active = self._stepping = False
        self._passes = max(self._passes - 1, 0)

    # ------------------------------------------------------------------------------------------------
    # the update of one bucket (whole, or the members that got a gradient)
    # ------------------------------------------------------------------------------------------------
    def _update(self, bucket: Bucket, members: list[int] | None) -> None:
        opt = self.optimizer
        groups = opt.param_groups
        idx = range(len(bucket.params)) if members is None else members
        states = self._ensure_states(bucket, list(idx))
        params = [bucket.params[j] for j in idx]
        grads = [grad_of(groups, bucket.group_rows[j], bucket.params[j]) for j in idx]
        if members is None:
            if bucket.batch is None:
                bucket.batch = F.make_batch(params, grads, states, steps=self._steps[bucket.lo:bucket.hi],
                                            group_index=self._group_index[bucket.lo:bucket.hi],
                                            amsgrad=bucket.amsgrad, master=bucket.master, fmt=self._fmt,
                                            salts=[self._salt[id(p)] for p in params])
            batch = bucket.batch
            batch.grads = grads
            norms = None if self._norms is None else self._norms[bucket.lo:bucket.hi]
            allreduce = bucket.allreduce
        else:
            rows = torch.tensor([bucket.lo + j for j in members], device=self._steps.device)
            batch = F.make_batch(params, grads, states, steps=self._steps[rows], group_index=self._group_index[rows],
                                 amsgrad=bucket.amsgrad, master=bucket.master, fmt=self._fmt,
                                 salts=[self._salt[id(p)] for p in params])
            norms = None if self._norms is None else torch.zeros(len(members), L.NORM_COLS, dtype=torch.float32,
                                                                     device=rows.device)
            allreduce = make_shard_allreduce(params) if bucket.allreduce is not None else None
        clock = opt.clock
        if self._lamb:
            F.lamb(batch, self._tables, clock, norms_out=norms, allreduce=allreduce, backend=bucket.backend)
            if members is not None:
                self._norms.index_copy_(0, rows, norms)
        else:
            F.adamw(batch, self._tables, clock, amsgrad=bucket.amsgrad, backend=bucket.backend)
        batch.grads = []
        for g in grads:
            if g.is_cuda:  # the kernel may still read it on this stream (FSDP2 allocates it on another)
                g.record_stream(torch.cuda.current_stream(g.device))
        del grads
        for p in params:
            p.grad = None

    # ------------------------------------------------------------------------------------------------
    # public
    # ------------------------------------------------------------------------------------------------
    def set_tokens(self, tokens: int | torch.Tensor) -> None:
        """The tokens of the current step (a token-clock schedule needs them): call it before the backward
        pass that updates (the ``accumulation_steps``-th); the clock adds them when that pass ends."""
        self._tokens = check_tokens(tokens, True)

    def telemetry(self) -> dict[str, Any]:
        """The optimizer's telemetry (``lr``, ``clock``) for the last step, with ``params`` in this handle's
        row order and, for LAMB, per-tensor ``param_norm``, ``update_norm`` and ``trust_ratio`` (device
        tensors; rows of parameters without a gradient keep their last values)."""
        out = dict(self.optimizer.telemetry())
        out["params"] = list(self._order)
        if self._norms is not None:
            out.update(param_norm=self._norms[:, L.NORM_PARAM], update_norm=self._norms[:, L.NORM_UPDATE],
                       trust_ratio=self._norms[:, L.NORM_RATIO])
        return out

    def detach(self) -> None:
        """Remove every hook: backward leaves the gradients in ``p.grad`` again and ``optimizer.step()``
        works, from the same state and clock. Gradients accumulated by an unfinished accumulation stay in
        ``p.grad`` (the next ``step()`` applies them). Idempotent; refused during a backward pass."""
        if self._active:
            raise RuntimeError("handle.detach() was called during a backward pass; call it between steps")
        for h in self._hooks:
            h.remove()
        self._hooks = []
        ref = _ATTACHED.get(self.optimizer)
        if ref is not None and ref() is self:
            del _ATTACHED[self.optimizer]
        self.attached = False

    def __repr__(self) -> str:
        return (f"ReleaseHandle({type(self.optimizer).__name__}, {len(self.buckets)} buckets of <= "
                f"{self.bucket_bytes} B, accumulation_steps={self.accumulation_steps}, attached={self.attached})")


def attach(model: torch.nn.Module, optimizer: FusedOptimizer, *, bucket_bytes: int = DEFAULT_BUCKET_BYTES,
           accumulation_steps: int = 1) -> ReleaseHandle:
    """Step ``optimizer`` inside ``model``'s backward passes, bucket by bucket, freeing each gradient.

    Args:
        model: the module whose forward outputs the loss is computed from (backward passes are counted by
            a hook on its outputs). An FSDP2 (``fully_shard``) model works; DDP and FSDP1 are refused.
        optimizer: a :class:`~lrsched_fused.FusedAdamW` or :class:`~lrsched_fused.FusedLAMB` over (some of)
            the model's parameters, without ``max_grad_norm``, ``skip_nonfinite`` or a GradScaler.
        bucket_bytes: gradient bytes per bucket (global, unsharded sizes); a bucket is one fused launch.
            Smaller buckets free gradients sooner, larger ones launch less. Default 25 MiB (DDP's).
        accumulation_steps: backward passes per update (gradients accumulate in ``p.grad`` over the
            first ``k - 1``). Default 1.

    Returns a :class:`ReleaseHandle`; ``handle.detach()`` restores the normal ``step()``.
    """
    if not isinstance(optimizer, FusedOptimizer):
        raise TypeError(f"optimizer must be a FusedAdamW or FusedLAMB (lrsched_fused); got {type(optimizer).__name__}")
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    if isinstance(bucket_bytes, bool) or not isinstance(bucket_bytes, int) or bucket_bytes < 1:
        raise ValueError(f"bucket_bytes must be an int >= 1; got {bucket_bytes!r}")
    if check_count(accumulation_steps, "accumulation_steps") < 1:
        raise ValueError(f"accumulation_steps must be an int >= 1; got {accumulation_steps!r}")
    why = refusal(optimizer)
    if why is not None:
        raise ValueError(f"gradient release refused: {why}")
    refuse_model(model)
    ref = _ATTACHED.get(optimizer)
    if ref is not None and ref() is not None and ref().attached:
        raise ValueError("gradient release is already attached to this optimizer: detach() that handle first")
    handle = ReleaseHandle(model, optimizer, bucket_bytes, accumulation_steps)
    _ATTACHED[optimizer] = weakref.ref(handle)
    return handle
