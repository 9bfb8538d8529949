"""How close is close: the two tiers of the README ("Tests: how close is a match"), written once for every test.

Tier 1: onnxcam is within ``tight`` of the float32 reference (torch autograd, pytorch-grad-cam), absolute or,
with ``relative=True``, relative to the reference's largest magnitude.

Tier 2, only where tier 1 fails: the float64 truth (the same reference run on ``model.double()``) is the
yardstick. onnxcam's distance from it, in max and in mean, must be at most ``k`` times the float32
reference's own distance, plus ``margin`` (absolute, or relative to the truth's largest magnitude) so that a
float32 reference that happens to land on the truth does not turn rounding into a failure. Tier 1 fails on
some machines and not on others (float32 rounding differs between CPUs and libraries): tier 2 decides those
cases on every machine alike. A wrong layer, target, formula or gradient rule is off by ~1e-1 and fails both.

Where float32 rounding is amplified (a ReLU mask or a max-pool choice that flips on a value within rounding
of its threshold, a division by a near-zero sum), one float32 reference is one throw of the dice. Measured
(resnet18 ``layer3``, Grad-CAM): the map is either ~7e-6 or 1.7e-3 from the truth, depending on whether one
element lands on either side of a ReLU; torch float32 and onnxcam each land on the far side on about 40% of
inputs nudged by a few ulps. Then ``k×`` one reference's distance is a lottery. ``alternatives`` gives more
float32 throws of the same reference (``nudged``: the input moved by ±4 float32 ulps, far below any input
meaning); they are computed one at a time, only while the check fails, and the yardstick becomes the largest
float32 distance among the throws so far: "onnxcam is no farther from the truth than float32 lands".

Set ``ONNXCAM_TOLERANCE_LOG`` to a file to append every comparison's numbers to it (one JSON line each): that
is how the bounds in the tests were measured. ``ONNXCAM_TOLERANCE_TIER=2`` skips tier 1, as on a machine where
every float32 reference is unlucky: the float64 tier must hold on its own.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from collections.abc import Callable, Iterable

import numpy as np


@dataclass
class Measured:
    what: str
    tier: int
    tight_distance: float  # max |ours - float32 reference| (relative when the check is relative)
    ours_max: float = float("nan")  # from the float64 truth (tier 2 only)
    ours_mean: float = float("nan")
    reference_max: float = float("nan")
    reference_mean: float = float("nan")
    throws: int = 0  # float32 references the tier-2 yardstick was taken over

    @property
    def ratio(self) -> tuple[float, float]:
        """onnxcam's distance from the truth over the float32 reference's (max, mean)."""
        return (self.ours_max / max(self.reference_max, 1e-30), self.ours_mean / max(self.reference_mean, 1e-30))


def _value(array_or_thunk) -> np.ndarray:
    return np.asarray(array_or_thunk() if callable(array_or_thunk) else array_or_thunk)


def _log(measured: Measured, passed: bool) -> None:
    path = os.environ.get("ONNXCAM_TOLERANCE_LOG")
    if path:
        with open(path, "a") as log:
            log.write(json.dumps({**asdict(measured), "ratio": measured.ratio, "passed": passed}) + "\n")


NUDGE_ULPS = 4  # how far ``nudged`` moves each input value, in float32 ulps (4 · 2⁻²³ ≈ 4.8e-7 relative)
NUDGE_PAIRS = 4  # nudged inputs tried, in ± pairs: 8 more float32 throws at most


def nudged(batch: np.ndarray, pairs: int = NUDGE_PAIRS):
    """``batch`` moved by ±``NUDGE_ULPS`` ulps, each value with a random sign (seeded): ``2 · pairs`` inputs that
    float32 cannot tell from ``batch``, one at a time (a generator: made only while needed)."""
    for pair in range(pairs):
        signs = np.random.default_rng(pair).choice([-1.0, 1.0], size=batch.shape)
        for direction in (1.0, -1.0):
            yield (batch.astype(np.float64) * (1 + direction * NUDGE_ULPS * 2.0 ** -23 * signs)).astype(batch.dtype)


class Throws:
    """``compute(batch)`` on the nudged copies of ``batch``: made one at a time when first asked for, then kept,
    so that several checks of one computation (logits, activations, gradients…) share them.
    ``throws(pick)`` yields ``pick(result)`` for each, for ``assert_two_tier(alternatives=…)``."""

    def __init__(self, compute: Callable[[np.ndarray], object], batch: np.ndarray):
        self._compute, self._inputs, self._results = compute, nudged(batch), []

    def __call__(self, pick: Callable[[object], np.ndarray] = lambda result: result) -> Iterable[np.ndarray]:
        index = 0
        while True:
            if index == len(self._results):
                at = next(self._inputs, None)
                if at is None:
                    return
                self._results.append(self._compute(at))
            yield pick(self._results[index])
            index += 1


def assert_two_tier(ours, reference, truth, *, tight: float = 1e-4, relative: bool = False, k: float = 2.0,
                    margin: float = 1e-6, alternatives: Callable[[], Iterable[np.ndarray]] | None = None,
                    meaningless: float | None = None, what: str = "") -> Measured:
    """``ours`` against ``reference`` (float32: an array, or a function that computes it) and, where that is
    farther than ``tight``, against ``truth()`` (float64) as above; ``alternatives()``: more float32 throws,
    taken one by one while the check fails. ``meaningless``: where float32 itself lands this far from the truth
    (absolute, or relative to its largest magnitude), ``k×`` that distance would let a wrong result through: tier 2
    refuses to judge (a principal component whose sign float64 chose the other way, say), and a throw that far is
    left out of the yardstick (the nudge changed a top class, say). Default 0.05 for absolute
    checks (maps in [0, 1]: a wrong map is off by ~1e-1; measured float32 distances up to 1.1e-2, DenseNet
    HiResCAM), 0.25 for relative ones (gradients: one flipped ReLU moves one element by its own size; measured
    up to 8.0e-2 of the largest, ResNet-50 ``layer3``). Returns the numbers measured."""
    ours = np.asarray(ours)
    reference = _value(reference)
    assert ours.shape == reference.shape, f"{what}: shape {ours.shape}, reference {reference.shape}"
    assert np.isfinite(ours).all(), f"{what}: not finite"
    scale = float(np.abs(reference).max()) if relative else 1.0
    assert scale > 0, f"{what}: the reference is all zeros; the comparison proves nothing"
    distance = float(np.abs(ours - reference).max()) / scale
    measured = Measured(what, 1, distance)
    if distance <= tight and os.environ.get("ONNXCAM_TOLERANCE_TIER") != "2":
        _log(measured, True)
        return measured
    exact = np.asarray(truth(), dtype=np.float64)
    unit = float(np.abs(exact).max()) if relative else 1.0
    floor, too_far = margin * unit, (meaningless if meaningless is not None else 0.25 if relative else 0.05) * unit
    ours_error = np.abs(ours - exact)
    measured = Measured(what, 2, distance, float(ours_error.max()), float(ours_error.mean()), 0.0, 0.0)

    def passes(throw: np.ndarray) -> bool:
        error = np.abs(np.asarray(throw, dtype=np.float64) - exact)
        if measured.throws and error.max() > too_far:
            return False  # a throw that went somewhere else (a top class that changed): no yardstick
        measured.reference_max = max(measured.reference_max, float(error.max()))
        measured.reference_mean = max(measured.reference_mean, float(error.mean()))
        measured.throws += 1
        return (measured.ours_max <= k * measured.reference_max + floor
                and measured.ours_mean <= k * measured.reference_mean + floor)

    passed = passes(reference)
    for throw in (alternatives() if alternatives is not None and not passed else ()):
        if passes(throw):
            passed = True
            break
    judged = measured.reference_max <= too_far
    _log(measured, passed and judged)
    assert judged, (
        f"{what}: {distance:.2e} from the float32 reference (tier 1: {tight:.0e}{' relative' if relative else ''}), "
        f"and the float32 reference is {measured.reference_max:.2e} from the float64 truth: too far for the truth to "
        "tell a right result from a wrong one")
    assert passed, (
        f"{what}: {distance:.2e} from the float32 reference (tier 1: {tight:.0e}{' relative' if relative else ''}); "
        f"from the float64 truth ours {measured.ours_max:.2e}/{measured.ours_mean:.2e} (max/mean), float32 at most "
        f"{measured.reference_max:.2e}/{measured.reference_mean:.2e} in {measured.throws} throw(s): over {k}x + "
        f"{floor:.1e}")
    return measured
