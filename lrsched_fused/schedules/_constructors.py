"""Schedule constructors: each builds a :class:`Schedule` (a chain of phases) from the usual arguments.

Conventions shared by every constructor (pinned by ``tests/test_schedules.py``):

* ``step`` counts updates already applied; the first update uses step 0 (optax, torch ``LambdaLR``).
* ``total_steps`` is the number of updates in the run; for ``step >= total_steps`` the value is
  ``final_lr``.
* Warmup is linear from ``init_lr`` at step 0 to the peak at ``warmup_steps``. The default
  ``init_lr=0.0`` matches transformers, so the first update has lr 0; set ``init_lr`` for a useful first
  step.
* Decay phases run over the steps after warmup (or after the stable phase for WSD) up to
  ``total_steps``; their progress is measured from their own start.
* Every argument is checked at construction; a bad one raises ``ValueError`` naming it and its range.
"""

from __future__ import annotations

from typing import Any

from ._phase import Phase, _check_count, _check_finite, _shape_name
from ._spec import Schedule

__all__ = ["constant", "linear", "cosine", "wsd", "rex", "power", "infinite", "rewarm", "DECAY_SHAPES"]

#: Decay shapes accepted by ``wsd``, ``power`` and ``rewarm``.
DECAY_SHAPES = ("linear", "cosine", "1-sqrt", "square", "exp")
#: Cooldown shapes accepted by ``infinite``.
COOLDOWN_SHAPES = ("cosine", "linear", "inv-sqrt")
#: Timescale of the ``inv-sqrt`` cooldown (Ibrahim et al.'s code uses ``timescale=10``).
INV_SQRT_TIMESCALE = 10.0


def _lr(name: str, value: Any) -> float:
    value = _check_finite(name, value)
    if value < 0:
        raise ValueError(f"{name} must be a finite number >= 0; got {value!r}")
    return value


def _decay_shape(name: str, value: Any, allowed: tuple[str, ...]) -> str:
    try:
        shape = _shape_name(value, name)
    except ValueError:
        shape = None
    if shape not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")
    return shape


def _total(name: str, value: Any) -> int:
    return _check_count(name, value, minimum=1)


def _warmup(name: str, value: Any, total: int) -> int:
    value = _check_count(name, value)
    if value > total:
        raise ValueError(f"{name} must be in [0, total_steps={total}]; got {value}")
    return value


def _decay_phase(shape: str, length: int, start: float, end: float, what: str) -> Phase:
    if shape == "exp" and length > 0 and not (start > 0 and end > 0):
        raise ValueError(f"final_lr must be > 0 for decay='exp' (geometric decay {what}); got {end!r}")
    return Phase(shape, length, start, end)


def _warmup_phase(length: int, init: float, peak: float) -> Phase:
    return Phase("linear", length, init, peak)


def constant(lr: float) -> Schedule:
    """``f(t) = lr`` for every ``t``."""
    lr = _lr("lr", lr)
    return Schedule((Phase("constant", 0, lr),), final_value=lr, name="constant", args={"lr": lr})


def linear(peak_lr: float, total_steps: int, warmup_steps: int = 0, final_lr: float = 0.0,
           init_lr: float = 0.0) -> Schedule:
    """Linear warmup, then linear decay to ``final_lr`` at ``total_steps``.

    .. math:: f(t) = \\eta_{peak} + (\\eta_{final} - \\eta_{peak})\\,\\frac{t - W}{T - W},\\quad W \\le t < T

    Linear decay to zero is the schedule Defazio et al. (arXiv 2310.07831) recommend as a default.
    """
    args = dict(peak_lr=peak_lr, total_steps=total_steps, warmup_steps=warmup_steps, final_lr=final_lr,
                init_lr=init_lr)
    peak, final, init = _lr("peak_lr", peak_lr), _lr("final_lr", final_lr), _lr("init_lr", init_lr)
    total = _total("total_steps", total_steps)
    warm = _warmup("warmup_steps", warmup_steps, total)
    phases = (_warmup_phase(warm, init, peak), Phase("linear", total - warm, peak, final))
    return Schedule(phases, final_value=final, name="linear", args=args)


def cosine(peak_lr: float, total_steps: int, warmup_steps: int = 0, final_lr: float = 0.0,
           init_lr: float = 0.0) -> Schedule:
    """Linear warmup, then half a cosine from ``peak_lr`` to ``final_lr`` (Loshchilov & Hutter, SGDR,
    arXiv 1608.03983):

    .. math:: f(t) = \\eta_{final} + \\tfrac12(\\eta_{peak} - \\eta_{final})(1 + \\cos(\\pi\\,\\tfrac{t - W}{T - W}))

    With ``warmup_steps=0`` this equals torch ``CosineAnnealingLR(T_max=total_steps,
    eta_min=final_lr)`` for ``t <= total_steps`` (torch's keeps oscillating after; this holds
    ``final_lr``).
    """
    args = dict(peak_lr=peak_lr, total_steps=total_steps, warmup_steps=warmup_steps, final_lr=final_lr,
                init_lr=init_lr)
    peak, final, init = _lr("peak_lr", peak_lr), _lr("final_lr", final_lr), _lr("init_lr", init_lr)
    total = _total("total_steps", total_steps)
    warm = _warmup("warmup_steps", warmup_steps, total)
    phases = (_warmup_phase(warm, init, peak), Phase("cosine", total - warm, peak, final))
    return Schedule(phases, final_value=final, name="cosine", args=args)


def wsd(peak_lr: float, total_steps: int | None = None, warmup_steps: int = 0, decay_steps: int | None = None,
        decay_fraction: float | None = None, decay: str = "linear", final_lr: float = 0.0, init_lr: float = 0.0,
        *, stable_steps: int | None = None) -> Schedule:
    """Warmup-stable-decay (a.k.a. trapezoidal): linear warmup, constant ``peak_lr``, then a decay over
    the last ``decay_steps`` updates (Hu et al., MiniCPM, arXiv 2404.06395; Haegele et al.,
    arXiv 2405.18392).

    Give exactly one of ``decay_steps`` / ``decay_fraction`` (then ``decay_steps =
    round(decay_fraction * total_steps)``, Python's ``round``). ``total_steps`` may be left out when
    ``stable_steps`` is given (``total = warmup + stable + decay``); when both are given they must agree.
    With ``p`` the progress through the decay window:

    ==========  ======================================  ===========================================
    ``decay``   value                                   peers' names
    ==========  ======================================  ===========================================
    linear      ``peak + (final - peak) p``             transformers ``linear``; Megatron ``linear``
    cosine      ``final + (peak-final)(1+cos pi p)/2``  transformers ``cosine`` (num_cycles=0.5);
                                                        Megatron ``cosine``; nanotron ``cosine``
    1-sqrt      ``peak + (final - peak) sqrt(p)``       transformers ``1-sqrt``; Megatron
                                                        ``minus_sqrt``; nanotron ``1-sqrt``;
                                                        Haegele et al. ``sqrt``
    square      ``peak + (final - peak) p^2``           Haegele et al. ``square``;
                                                        pytorch-optimizer ``1-square`` (to 0)
    exp         ``peak (final/peak)^p`` (final > 0)     MiniCPM's exponential decay written with
                                                        explicit endpoints. Megatron's
                                                        ``exponential`` is ``2*0.5^p - 1``, not this.
    ==========  ======================================  ===========================================

    transformers' ``min_lr_ratio=r`` corresponds to ``final_lr = init_lr = r * peak_lr`` (its warmup
    starts at ``r``). Megatron's ``lr_wsd_decay_steps`` is ``decay_steps``, ``min_lr`` is ``final_lr``.
    """
    args = dict(peak_lr=peak_lr, total_steps=total_steps, warmup_steps=warmup_steps, decay_steps=decay_steps,
                decay_fraction=decay_fraction, decay=decay, final_lr=final_lr, init_lr=init_lr)
    if stable_steps is not None:
        args["stable_steps"] = stable_steps
    peak, final, init = _lr("peak_lr", peak_lr), _lr("final_lr", final_lr), _lr("init_lr", init_lr)
    shape = _decay_shape("decay", decay, DECAY_SHAPES)
    if (decay_steps is None) == (decay_fraction is None):
        raise ValueError("give exactly one of decay_steps or decay_fraction "
                         f"(got decay_steps={decay_steps!r}, decay_fraction={decay_fraction!r})")
    warm_raw = _check_count("warmup_steps", warmup_steps)
    if total_steps is None:
        if stable_steps is None:
            raise ValueError("total_steps must be given (an integer >= 1), or stable_steps with decay_steps")
        if decay_steps is None:
            raise ValueError("decay_fraction needs total_steps; with stable_steps give decay_steps instead")
        total = _total("total_steps", warm_raw + _check_count("stable_steps", stable_steps)
                       + _check_count("decay_steps", decay_steps))
    else:
        total = _total("total_steps", total_steps)
    warm = _warmup("warmup_steps", warm_raw, total)
    if decay_fraction is not None:
        frac = _check_finite("decay_fraction", decay_fraction)
        if not 0.0 <= frac <= 1.0:
            raise ValueError(f"decay_fraction must be in [0, 1]; got {decay_fraction!r}")
        n_decay = round(frac * total)
    else:
        n_decay = _check_count("decay_steps", decay_steps)
    if warm + n_decay > total:
        raise ValueError(f"decay_steps ({n_decay}) + warmup_steps ({warm}) must be <= total_steps ({total}); "
                         "the decay would overlap the warmup")
    stable = total - warm - n_decay
    if stable_steps is not None and _check_count("stable_steps", stable_steps) != stable:
        raise ValueError(f"stable_steps ({stable_steps}) disagrees with total_steps - warmup_steps - decay_steps "
                         f"= {stable}; give one of stable_steps or total_steps")
    phases = (_warmup_phase(warm, init, peak), Phase("constant", stable, peak),
              _decay_phase(shape, n_decay, peak, final, "from peak_lr"))
    return Schedule(phases, final_value=final, name="wsd", args=args)


def rex(peak_lr: float, total_steps: int, warmup_steps: int = 0, final_lr: float = 0.0, init_lr: float = 0.0,
        beta: float = 0.5) -> Schedule:
    """REX (Chen, Wolfe, Kyrillidis, "REX: Revisiting Budgeted Training with an Improved Schedule",
    MLSys 2022, arXiv 2107.04197): after warmup, with ``z = (t - W) / (T - W)``,

    .. math:: f(t) = \\eta_{final} + (\\eta_{peak} - \\eta_{final})\\,\\frac{1 - z}{(1 - \\beta) + \\beta (1 - z)}

    ``beta=0.5`` is the paper's profile ``(1 - z) / (1/2 + (1 - z)/2)``; ``beta=0.9`` is the variant in
    the authors' code and most ports (``z' / (0.1 + 0.9 z')``). The lr is re-sampled every update.
    pytorch-optimizer's ``REXScheduler`` differs: it starts the first update at ``min_lr`` and its
    ``step()`` returns ``f(1/T), f(2/T), ...``; here the first update after warmup uses ``z = 0``, i.e.
    ``peak_lr``.
    """
    args = dict(peak_lr=peak_lr, total_steps=total_steps, warmup_steps=warmup_steps, final_lr=final_lr,
                init_lr=init_lr, beta=beta)
    peak, final, init = _lr("peak_lr", peak_lr), _lr("final_lr", final_lr), _lr("init_lr", init_lr)
    total = _total("total_steps", total_steps)
    warm = _warmup("warmup_steps", warmup_steps, total)
    b = _check_finite("beta", beta)
    if not 0.0 <= b < 1.0:
        raise ValueError(f"beta must be in [0, 1); got {beta!r}")
    phases = (_warmup_phase(warm, init, peak), Phase("rex", total - warm, peak, final, a=b))
    return Schedule(phases, final_value=final, name="rex", args=args)


def power(max_lr: float, a: float, b: float, total: int, warmup: int = 0, decay_fraction: float = 0.0,
          decay: str = "linear", final_lr: float = 0.0, batch_size: float = 1, unit: str = "tokens") -> Schedule:
    """The power scheduler (Shen et al., "Power Scheduler: A Batch Size and Token Number Agnostic
    Learning Rate Scheduler", arXiv 2408.13359):

    .. math:: \\eta(n) = \\min(\\eta_{max},\\ \\beta\\, a\\, n^{b})

    over the clock ``n`` (tokens by default; ``unit="steps"`` for updates), ``beta = batch_size``.
    Linear warmup from 0 to ``eta(warmup)``, then ``eta(n)``, then, if ``decay_fraction > 0``, a decay
    of the given shape over the last ``round(decay_fraction * total)`` clock units from
    ``eta(total - n_decay)`` to ``final_lr``. Without a decay the value after ``total`` holds
    ``eta(total)``.

    ``a`` and ``b`` have no defaults. As reported (paper text not re-checked here), the paper uses
    ``a ~ 4.6``, ``b ~ -0.51`` and ``max_lr ~ 0.02`` with muP, and an exponential final decay. IBM's
    reference code (dolomite-engine / lm_engine ``PowerScheduler``) computes ``min(lr, a (n c)^b)`` with
    ``a = batch_size`` and ``c = batch_size * seq_len`` and has no final decay.
    """
    args = dict(max_lr=max_lr, a=a, b=b, total=total, warmup=warmup, decay_fraction=decay_fraction, decay=decay,
                final_lr=final_lr, batch_size=batch_size, unit=unit)
    cap, final = _lr("max_lr", max_lr), _lr("final_lr", final_lr)
    if cap <= 0:
        raise ValueError(f"max_lr must be > 0; got {max_lr!r}")
    coef_a, exponent = _check_finite("a", a), _check_finite("b", b)
    if coef_a <= 0:
        raise ValueError(f"a must be > 0; got {a!r}")
    bs = _check_finite("batch_size", batch_size)
    if bs <= 0:
        raise ValueError(f"batch_size must be > 0; got {batch_size!r}")
    if unit not in ("tokens", "steps"):
        raise ValueError(f"unit must be 'tokens' or 'steps'; got {unit!r}")
    n_total = _check_count("total", total, minimum=1)
    warm = _check_count("warmup", warmup)
    if warm > n_total:
        raise ValueError(f"warmup must be in [0, total={n_total}]; got {warm}")
    frac = _check_finite("decay_fraction", decay_fraction)
    if not 0.0 <= frac <= 1.0:
        raise ValueError(f"decay_fraction must be in [0, 1]; got {decay_fraction!r}")
    shape = _decay_shape("decay", decay, DECAY_SHAPES)
    n_decay = round(frac * n_total)
    if warm + n_decay > n_total:
        raise ValueError(f"round(decay_fraction * total) ({n_decay}) + warmup ({warm}) must be <= total ({n_total})")
    coef = bs * coef_a
    law = Phase("power", n_total - warm - n_decay, 0.0, 0.0, a=coef, b=exponent, c=cap)
    law_start = warm
    law = Phase("power", law.length, law.value_at(law_start, law_start),
                law.value_at(law_start + law.length, law_start), a=coef, b=exponent, c=cap)
    phases = [_warmup_phase(warm, 0.0, law.start_value), law]
    if n_decay > 0:
        phases.append(_decay_phase(shape, n_decay, law.end_value, final, "from the power law"))
        final_value = final
    else:
        final_value = law.end_value
    return Schedule(tuple(phases), final_value=final_value, unit=unit, name="power", args=args)


def infinite(peak_lr: float, total_steps: int, warmup_steps: int, cooldown_steps: int, constant_lr: float,
             anneal_steps: int, final_lr: float, cooldown: str = "cosine") -> Schedule:
    """The infinite learning-rate schedule for continual pre-training (Ibrahim et al., "Simple and
    Scalable Strategies to Continually Pre-train Large Language Models", arXiv 2403.08763):

    * warmup ``[0, W)``: linear from 0 to ``peak_lr``;
    * cooldown ``[W, W + C)``: ``cosine`` / ``linear`` / ``inv-sqrt`` from ``peak_lr`` to ``constant_lr``
      (``inv-sqrt``: ``peak + (constant - peak) g(p)/g(1)``, ``g(p) = 1/sqrt(1 + 10 p) - 1``, the
      authors' timescale 10);
    * constant ``constant_lr`` until ``total_steps - anneal_steps``;
    * anneal over the last ``anneal_steps``: ``constant_lr * (final_lr / constant_lr)^p``, the authors'
      ``exp(-ln(eta_c / eta_min) p)`` form (``final_lr > 0``);
    * ``final_lr`` afterwards.

    ``cooldown_steps`` is the cooldown's own length (the authors' ``cooldown_ratio`` marks where it
    *ends*, measured from step 0: ``cooldown_steps = cooldown_ratio * N - warmup_steps``).
    """
    args = dict(peak_lr=peak_lr, total_steps=total_steps, warmup_steps=warmup_steps, cooldown_steps=cooldown_steps,
                constant_lr=constant_lr, anneal_steps=anneal_steps, final_lr=final_lr, cooldown=cooldown)
    peak, const, final = _lr("peak_lr", peak_lr), _lr("constant_lr", constant_lr), _lr("final_lr", final_lr)
    total = _total("total_steps", total_steps)
    warm = _warmup("warmup_steps", warmup_steps, total)
    cool = _check_count("cooldown_steps", cooldown_steps)
    anneal = _check_count("anneal_steps", anneal_steps)
    shape = _decay_shape("cooldown", cooldown, COOLDOWN_SHAPES)
    if warm + cool + anneal > total:
        raise ValueError(f"warmup_steps ({warm}) + cooldown_steps ({cool}) + anneal_steps ({anneal}) must be "
                         f"<= total_steps ({total})")
    if anneal > 0 and not (const > 0 and final > 0):
        raise ValueError(f"constant_lr and final_lr must be > 0 for the exponential anneal; got {const!r}, {final!r}")
    cool_phase = Phase(shape, cool, peak, const, a=INV_SQRT_TIMESCALE if shape == "inv-sqrt" else 0.0)
    phases = (_warmup_phase(warm, 0.0, peak), cool_phase, Phase("constant", total - warm - cool - anneal, const),
              Phase("exp", anneal, const, final) if anneal else Phase("constant", 0, const))
    return Schedule(phases, final_value=final if anneal else const, name="infinite", args=args)


def rewarm(schedule: Schedule, at_step: int, warmup_steps: int, peak_lr: float, total_steps: int,
           final_lr: float = 0.0, decay: str = "cosine", init_lr: float | None = None) -> Schedule:
    """Re-warming and re-decaying for continual pre-training (Gupta et al., "Continual Pre-Training of
    Large Language Models: How to (re)warm your model?", arXiv 2308.04014).

    Equal to ``schedule`` for ``t < at_step``; then a linear warmup from ``init_lr`` (default: the old
    schedule's value at ``at_step``, so the lr does not jump; Gupta et al. warm up from 0, pass
    ``init_lr=0.0`` for that) to ``peak_lr`` over ``warmup_steps``; then ``decay`` to ``final_lr`` at
    ``total_steps`` (absolute, on the same clock). A running optimizer switches with
    ``opt.set_schedule(new)``: data changes, no kernel is recompiled.
    """
    if not isinstance(schedule, Schedule):
        raise ValueError(f"schedule must be a Schedule; got {type(schedule).__name__}")
    args = dict(schedule=schedule, at_step=at_step, warmup_steps=warmup_steps, peak_lr=peak_lr,
                total_steps=total_steps, final_lr=final_lr, decay=decay, init_lr=init_lr)
    at = _check_count("at_step", at_step)
    warm = _check_count("warmup_steps", warmup_steps)
    peak, final = _lr("peak_lr", peak_lr), _lr("final_lr", final_lr)
    total = _total("total_steps", total_steps)
    if at + warm > total:
        raise ValueError(f"at_step ({at}) + warmup_steps ({warm}) must be <= total_steps ({total})")
    shape = _decay_shape("decay", decay, DECAY_SHAPES)
    start = schedule(at) if init_lr is None else _lr("init_lr", init_lr)
    phases = schedule.truncate(at) + (_warmup_phase(warm, start, peak),
                                      _decay_phase(shape, total - at - warm, peak, final, "from peak_lr"))
    return Schedule(phases, final_value=final, unit=schedule.unit, name="rewarm", args=args)

