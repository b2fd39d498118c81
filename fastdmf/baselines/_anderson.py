"""Type-II Anderson acceleration of a fixed-point iteration a <- a + g(a) (Walker & Ni 2011)."""

from __future__ import annotations

import numpy as np


class Anderson:
    """Extrapolate a fixed-point iteration from its last ``memory`` steps.

    With ``da_i = a_{i+1} - a_i`` and ``dg_i = g_{i+1} - g_i`` (g the fixed-point residual),
    the next point is ``a + g - (dA + dG) gamma``, ``gamma = argmin ||g - dG gamma||``.
    The least-squares problem is solved through its (memory x memory) Gram matrix, with a small
    ridge so that nearly collinear histories stay harmless.
    """

    def __init__(self, memory: int):
        self.memory = memory
        self.reset()

    def reset(self) -> None:
        self.da, self.dg = [], []
        self.prev = None

    def step(self, a: np.ndarray, g: np.ndarray) -> np.ndarray:
        """The next point from the current point ``a`` and its residual ``g``."""
        if self.prev is not None:
            pa, pg = self.prev
            self.da.append(a - pa)
            self.dg.append(g - pg)
            if len(self.da) > self.memory:
                self.da.pop(0)
                self.dg.pop(0)
        self.prev = (a, g)
        nxt = a + g
        if not self.dg:
            return nxt
        flat = [d.reshape(-1) for d in self.dg]
        gram = np.array([[x @ z for z in flat] for x in flat])
        rhs = np.array([x @ g.reshape(-1) for x in flat])
        gram[np.diag_indices_from(gram)] *= 1.0 + 1e-10
        gram[np.diag_indices_from(gram)] += 1e-300
        try:
            gamma = np.linalg.solve(gram, rhs)
        except np.linalg.LinAlgError:
            self.reset()
            return nxt
        for c, da, dg in zip(gamma, self.da, self.dg, strict=True):
            nxt -= c * (da + dg)
        return nxt
