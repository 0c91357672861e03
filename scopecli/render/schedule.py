"""Optimisation schedules: how the learning rate, Adam, the start and the transforms change over a render.

Lucid's recipe (`lucid`: constant Adam lr 0.05, transforms at full strength throughout, 1/f spectrum, tiny
random start) keeps improving for 512 steps and beyond. The `fast` schedule reaches what 512 `lucid`
steps reach in 128 steps (scripts/bench_render.py --quality: the measurements that chose every number
below, on early, middle and late layers of pretrained EfficientNet-Lite0, against real photos):

- Adam beta1 0.5: momentum over ~2 steps instead of ~10 follows the changing transforms more closely;
- a 10x larger random start: the first steps already see structure, not flat gray;
- spectrum scaled 1/f^1.25 instead of 1/f: less weight on the highest frequencies (lower high-frequency
  energy than `lucid` at 512 steps, so no new noise);
- transforms kept at full strength for the first half, then shrunk linearly to a quarter (pad, jitters,
  scale and rotation ranges): the image settles on the view it is finally measured in, while a quarter of
  the jitter keeps it robust (its activation under full random transforms stays above `lucid`'s at the
  same steps);
- learning rate 0.07 (not 0.05) for its first half, then a cosine decay to 10 %: the image converges
  instead of wandering at the end, so small float-rounding differences (another batch, another machine)
  shrink rather than grow in the last steps.

The `settle` schedule (the default since 0.3) reaches in 64 steps what `lucid` reaches in 512 (the median ratio of
scripts/bench_render.py --quality on `_blocks.8`, measured side by side), by two changes to `fast`:
- transforms shrink from 30 % of the run (not half) all the way to none: the last steps polish the exact view the
  picture is stored and measured in. Its score under random transforms stays within 4 % of `fast`'s at the same
  steps (64 steps: 2.86 / 9.61 / 8.44 against 2.84 / 9.74 / 8.76 on `_blocks.2` / `.8` / `.15`), so the picture is
  not a pixel-exact trick; high-frequency energy and saturation do not grow;
- the learning rate stays full until 60 % of the run (not half), so a short run keeps its pace.
Tried and left out: Adam beta2 0.99 (3 % more in 64 steps, but another CPU's rounding then changed a unit's picture
far more: tests/test_render_engine.py's alone-vs-batched correlation fell from 0.92 to 0.69); optimizing at half
resolution first (the Fourier spectrum zero-padded up) or on random half-size crops, which reached less in the same
wall time (the upsampled start has the wrong scale; crops see padding at their edges).

A schedule is a pure function of (step, steps): nothing in it depends on the batch, so a unit still
starts and is transformed the same alone or in any batch. Its `name` is stored with every render; `describe()` goes into the
artifact's provenance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scopecli.core.errors import ScopeError
from scopecli.render.transforms import TransformSpec


@dataclass(frozen=True)
class Schedule:
    """Everything about a render's optimisation that is not a CLI flag of its own."""

    name: str
    lr: float  # default learning rate (--lr overrides)
    betas: tuple[float, float] = (0.9, 0.999)
    init_scale: float = 1.0  # times the parameterization's tiny default start
    decay_power: float = 1.0  # fft spectrum scaled 1/f^decay_power
    transform_end: float = 1.0  # transform strength at the last step (1: constant)
    transform_from: float = 0.5  # fraction of steps after which the strength starts to shrink
    lr_end: float = 1.0  # learning rate at the last step, as a fraction of lr (1: constant)
    lr_from: float = 0.5  # fraction of steps after which the cosine decay starts

    def lr_at(self, step: int, steps: int, lr: float) -> float:
        """Learning rate of step `step` (0-based) of `steps`."""
        if self.lr_end == 1.0:
            return lr
        u = _ramp(step, steps, self.lr_from)
        return lr * (self.lr_end + (1.0 - self.lr_end) * 0.5 * (1.0 + math.cos(math.pi * u)))

    def strength_at(self, step: int, steps: int) -> float:
        """Transform strength of step `step`: 1 (full) shrinking linearly to `transform_end`."""
        if self.transform_end == 1.0:
            return 1.0
        return 1.0 + (self.transform_end - 1.0) * _ramp(step, steps, self.transform_from)

    def describe(self) -> dict:
        return {
            "name": self.name,
            "adam_betas": list(self.betas),
            "init_scale": self.init_scale,
            "spectrum_decay": self.decay_power,
            "transforms": {"end": self.transform_end, "from": self.transform_from},
            "lr": {"end": self.lr_end, "from": self.lr_from, "shape": "cosine" if self.lr_end != 1.0 else "constant"},
        }


def _ramp(step: int, steps: int, start: float) -> float:
    """0 until `start` of the run, then linearly to 1 at the last step."""
    last = max(1, steps - 1)
    t = step / last
    if t <= start:
        return 0.0
    return min(1.0, (t - start) / max(1e-9, 1.0 - start))


def scaled_transforms(spec: TransformSpec, strength: float) -> TransformSpec:
    """`spec` with every range shrunk by `strength` (pad and jitters rounded to whole pixels)."""
    if strength == 1.0:
        return spec
    return TransformSpec(
        pad=int(round(spec.pad * strength)),
        jitter1=int(round(spec.jitter1 * strength)),
        scales=tuple(1.0 + (s - 1.0) * strength for s in spec.scales),
        angles=tuple(a * strength for a in spec.angles),
        jitter2=int(round(spec.jitter2 * strength)),
        pad_value=spec.pad_value,
    )


SCHEDULES: dict[str, Schedule] = {
    "lucid": Schedule("lucid", lr=0.05),
    "fast": Schedule("fast", lr=0.07, betas=(0.5, 0.999), init_scale=10.0, decay_power=1.25,
                     transform_end=0.25, transform_from=0.5, lr_end=0.1, lr_from=0.5),
    "settle": Schedule("settle", lr=0.07, betas=(0.5, 0.999), init_scale=10.0, decay_power=1.25,
                       transform_end=0.0, transform_from=0.3, lr_end=0.1, lr_from=0.6),
}
DEFAULT_SCHEDULE = "settle"
DEFAULT_STEPS = {"lucid": 512, "fast": 128, "settle": 64}


def get_schedule(name: str) -> Schedule:
    if name not in SCHEDULES:
        raise ScopeError(f"unknown --schedule '{name}': choose one of {', '.join(SCHEDULES)}")
    return SCHEDULES[name]
