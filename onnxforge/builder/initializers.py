"""Deterministic parameter initialisation from a seed, Keras-style schemes."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

# Bare names people use for the families map to their usual member.
ALIASES = {"xavier_uniform": "glorot_uniform", "xavier_normal": "glorot_normal"}

_Sampler = Callable[[np.random.Generator, tuple[int, ...], int, int], np.ndarray]


def _uniform(limit: Callable[[int, int], float]) -> _Sampler:
    return lambda rng, shape, fan_in, fan_out: rng.uniform(
        -limit(fan_in, fan_out), limit(fan_in, fan_out), size=shape
    )


def _normal(std: Callable[[int, int], float]) -> _Sampler:
    return lambda rng, shape, fan_in, fan_out: rng.normal(0.0, std(fan_in, fan_out), size=shape)


SCHEMES: dict[str, _Sampler] = {
    "glorot_uniform": _uniform(lambda i, o: float(np.sqrt(6.0 / (i + o)))),
    "glorot_normal": _normal(lambda i, o: float(np.sqrt(2.0 / (i + o)))),
    "he_uniform": _uniform(lambda i, o: float(np.sqrt(6.0 / i))),
    "he_normal": _normal(lambda i, o: float(np.sqrt(2.0 / i))),
    "lecun_uniform": _uniform(lambda i, o: float(np.sqrt(3.0 / i))),
    "lecun_normal": _normal(lambda i, o: float(np.sqrt(1.0 / i))),
    "normal": _normal(lambda i, o: 0.05),
    "uniform": _uniform(lambda i, o: 0.05),
    "zeros": lambda rng, shape, fan_in, fan_out: np.zeros(shape),
}


def dense_weight(scheme: str, fan_in: int, fan_out: int, seed: int, index: int) -> np.ndarray:
    """A (fan_in, fan_out) float32 weight for the layer at ``index``.

    The generator is keyed by (seed, layer index), so adding or changing one layer never
    changes the initial weights of the others.
    """
    rng = np.random.default_rng([seed, index])
    sampler = SCHEMES[ALIASES.get(scheme, scheme)]
    return np.asarray(sampler(rng, (fan_in, fan_out), fan_in, fan_out), dtype=np.float32)
