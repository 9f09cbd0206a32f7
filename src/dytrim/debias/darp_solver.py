"""DARP's refinement of a table of pseudo-label probabilities (Kim et al., NeurIPS 2020): noise removal, then the
dual solve that aligns the table's column sums with a target class distribution c.

Official rule (bbuing9/DARP `common.py::estimate_pseudo`, `opt_solver`; called from `training_functions.py`):
1. noise removal: for each class j, the n_j = int(α·c_j) rows with the largest Q[:, j] are selected (S[i, j] = 1)
   and k_j is the sum of those probabilities; g_j = (c_j + 1e-6) / (k_j + 1e-6); Q ← rows of (Q ⊙ S ⊙ g + 1e-6)
   normalised to sum 1 (a row selected by no class becomes uniform);
2. dual solve: H_i = −Σ_j Q_ij log(Q_ij + 1e-6), w_i = 1/H_i, A = Q/e, y_ij = exp(−ν_j/w_i) with ν = 1 at first;
   T times: x_i = 1/Σ_j A_ij y_ij, then for each class ν_j solves Σ_i A_ij x_i exp(−ν/w_i) = c_j by the secant
   method started at the previous ν_j (0 in the first iteration), and y is recomputed; finally
   M_ij = A_ij x_i y_ij with x from the last y (rows sum to 1; columns ≈ c).
The root finder is `secant`, scipy.optimize.newton without a derivative re-written (same second starting point,
update formula, step tolerance and iteration cap), so the package needs no scipy. Computed in float64 on the
CPU (official: float32 for step 1, the entropy and A; float64 in the solver): the results agree to ~1e-7.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np


def remove_noise(q: np.ndarray, c: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """(S [N, C] of 0/1, g [C]) of the table q [N, C] for the target c [C] (official `estimate_pseudo`).

    Ties in a column are broken by position (a stable descending sort, as torch's CPU sort)."""
    n_rows, n_cls = q.shape
    s = np.zeros((n_rows, n_cls))
    k = np.zeros(n_cls)
    for j in range(n_cls):
        n_j = int(alpha * c[j])
        order = np.argsort(-q[:, j], kind="stable")[:n_j]
        s[order, j] = 1.0
        k[j] = np.sum(q[order, j])
    return s, (c + 1e-6) / (k + 1e-6)


def normalize_selected(q: np.ndarray, s: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Rows of q ⊙ S ⊙ g + 1e-6 normalised to sum 1 (the table the dual solve starts from)."""
    kept = q * (s * g[None, :]) + 1e-6
    return kept / kept.sum(axis=1, keepdims=True)


def secant(func: Callable[[float], float], x0: float, tol: float, maxiter: int) -> tuple[float, bool]:
    """(root, converged) of func by scipy.optimize.newton's secant branch (no fprime, x1=None, rtol=0).

    The second point is x0·(1 + 1e-4) ± 1e-4; the better of the two points is kept as the newer one; each step is
    the secant through the last two points; it stops when the step is <= tol, or after `maxiter` steps. Where
    scipy (disp=True, as the official call) raises RuntimeError (no convergence; equal values at distinct points),
    this returns the point scipy would (the last iterate; the midpoint) with converged False."""
    p0 = float(x0)
    p1 = p0 * (1 + 1e-4)
    p1 += 1e-4 if p1 >= 0 else -1e-4
    q0, q1 = func(p0), func(p1)
    if abs(q1) < abs(q0):
        p0, p1, q0, q1 = p1, p0, q1, q0
    p = p1
    for _ in range(maxiter):
        if q1 == q0:
            return (p1 + p0) / 2.0, False
        if abs(q1) > abs(q0):
            p = (-q0 / q1 * p1 + p0) / (1 - q0 / q1)
        else:
            p = (-q1 / q0 * p0 + p1) / (1 - q1 / q0)
        if abs(p - p1) <= tol:  # np.isclose(p, p1, rtol=0, atol=tol)
            return p, True
        p0, q0 = p1, q1
        p1 = p
        q1 = func(p1)
    return p, False


def dual_solve(q: np.ndarray, c: np.ndarray, iters: int = 10, tol: float = 0.1,
               maxiter: int = 30) -> tuple[np.ndarray, int]:
    """(M [N, C], number of secant solves that did not converge) from the normalised table q (official
    `opt_solver`: T = iters, th = tol, num_newton = maxiter)."""
    w = 1.0 / (-(q * np.log(q + 1e-6)).sum(axis=1))
    a = q / math.e
    y = np.exp(-np.ones((1, q.shape[1])) / w[:, None])
    nu = np.zeros(q.shape[1])
    failed = 0
    for _ in range(iters):
        x = 1.0 / np.sum(a * y, axis=1)
        for j in range(q.shape[1]):
            ab, target = a[:, j] * x, float(c[j])

            def gap(v: float, ab: np.ndarray = ab, target: float = target) -> float:
                return float(np.sum(ab * np.exp(-v / w)) - target)

            nu[j], ok = secant(gap, nu[j], tol, maxiter)
            failed += not ok
        y = np.exp(-nu[None, :] / w[:, None])
    x = 1.0 / np.sum(a * y, axis=1)
    return a * x[:, None] * y, failed


def refine(q: np.ndarray, c: np.ndarray, alpha: float = 2.0, iters: int = 10, tol: float = 0.1,
           maxiter: int = 30) -> tuple[np.ndarray, int]:
    """DARP's refined table M [N, C] of the table q [N, C] for the target c [C] (noise removal, then the dual
    solve), and the number of secant solves that did not converge; q itself is not changed."""
    q = np.asarray(q, dtype=np.float64)
    s, g = remove_noise(q, np.asarray(c, dtype=np.float64), alpha)
    return dual_solve(normalize_selected(q, s, g), np.asarray(c, dtype=np.float64), iters, tol, maxiter)
