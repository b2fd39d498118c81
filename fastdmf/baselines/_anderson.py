"""Type-II Anderson acceleration of a fixed-point iteration a <- a + g(a) (Walker & Ni 2011)."""

from __future__ import annotations

import numpy as np


class Anderson:
    """Extrapolate a fixed-point iteration from its last ``memory`` steps.

    With ``da_i = a_{i+1} - a_i`` and ``dg_i = g_{i+1} - g_i`` (g the fixed-point residual),
    the next point is ``a + g - (dA + dG) gamma``, ``gamma = argmin ||g - dG gamma||``.
    The least-squares problem is solved through its (memory x memory) Gram matrix, with a small
    ridge so that nearly collinear histories stay harmless. The differences live in two
    ``(memory, size)`` ring buffers, so one step costs three matrix products and one new row
    of the Gram matrix.
    """

    def __init__(self, memory: int):
        self.memory = memory
        self.dg = self.dsum = self.gram = None
        self.reset()

    def reset(self) -> None:
        self.count = 0  # differences held (at most memory)
        self.head = 0  # ring-buffer slot of the next difference
        self.prev = None

    def _push(self, da: np.ndarray, dg: np.ndarray) -> None:
        if self.dg is None or self.dg.shape[1] != dg.size:
            self.dg = np.empty((self.memory, dg.size))
            self.dsum = np.empty((self.memory, dg.size))
            self.gram = np.empty((self.memory, self.memory))
        slot = self.head
        self.dg[slot] = dg
        np.add(da, dg, out=self.dsum[slot])
        self.count = min(self.count + 1, self.memory)
        self.head = (slot + 1) % self.memory
        row = self.dg[: self.count] @ self.dg[slot]
        self.gram[slot, : self.count] = row
        self.gram[: self.count, slot] = row

    def step(self, a: np.ndarray, g: np.ndarray) -> np.ndarray:
        """The next point from the current point ``a`` and its residual ``g``."""
        flat_a, flat_g = a.reshape(-1), g.reshape(-1)
        if self.prev is not None:
            pa, pg = self.prev
            self._push(flat_a - pa, flat_g - pg)
        self.prev = (flat_a.copy(), flat_g.copy())
        nxt = a + g
        if not self.count:
            return nxt
        k = self.count
        gram = self.gram[:k, :k].copy()
        rhs = self.dg[:k] @ flat_g
        diag = gram.reshape(-1)[:: k + 1]  # a view of the diagonal
        diag *= 1.0 + 1e-10
        diag += 1e-300
        try:
            gamma = np.linalg.solve(gram, rhs)
        except np.linalg.LinAlgError:
            self.reset()
            return nxt
        nxt.reshape(-1)[:] -= gamma @ self.dsum[:k]
        return nxt
