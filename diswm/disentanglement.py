"""Disentanglement metrics of a code against ground-truth factors, in numpy.

    scores = disentanglement_scores(codes_NK, factors_NF)   # {"mig": ..., "sap": ..., ...}

- **MIG** (Chen et al. 2018, "Isolating sources of disentanglement in VAEs", eq. 5): for each
  factor v_j, the gap between the two largest mutual informations I(z_i; v_j) over code dims,
  divided by H(v_j); averaged over factors. Codes and continuous factors are discretised into
  `bins` equal-width histogram bins (as disentanglement_lib does), MI from the joint histogram.
- **SAP** (Kumar et al. 2018, "Variational inference of disentangled latent concepts", section 3):
  S[i, j] = R^2 of a linear fit of v_j from z_i alone (= squared Pearson correlation); for each
  factor the gap between the two largest S[., j]; averaged over factors.

Both are 1 when every factor is captured by exactly one code dim and no other dim says anything
about it, and 0 when no dim is informative (or two dims are equally so). Constant factors (no
variance in the sample) carry no information and are left out.
"""

from __future__ import annotations

import numpy as np


def discretize(x_NK: np.ndarray, bins: int = 20) -> np.ndarray:
    """Each column into `bins` equal-width bins over its own range -> int64 (N, K)."""
    x = np.asarray(x_NK, np.float64)
    lo, hi = x.min(0), x.max(0)
    width = np.where(hi > lo, hi - lo, 1.0)
    return np.clip(((x - lo) / width * bins).astype(np.int64), 0, bins - 1)


def entropy(labels_N: np.ndarray) -> float:
    """H(v) in nats of a discrete variable."""
    _, counts = np.unique(labels_N, return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log(p)).sum())


def mutual_info(a_N: np.ndarray, b_N: np.ndarray) -> float:
    """I(a; b) in nats of two discrete variables from their joint histogram."""
    _, a = np.unique(a_N, return_inverse=True)
    _, b = np.unique(b_N, return_inverse=True)
    joint = np.zeros((a.max() + 1, b.max() + 1))
    np.add.at(joint, (a, b), 1.0)
    joint /= joint.sum()
    pa, pb = joint.sum(1, keepdims=True), joint.sum(0, keepdims=True)
    nz = joint > 0
    return float((joint[nz] * np.log(joint[nz] / (pa @ pb)[nz])).sum())


def mutual_info_matrix(codes_NK: np.ndarray, factors_NF: np.ndarray, bins: int = 20) -> np.ndarray:
    """(K, F) matrix of I(z_i; v_j) on discretised codes and factors."""
    zc, vc = discretize(codes_NK, bins), discretize(factors_NF, bins)
    return np.array([[mutual_info(zc[:, i], vc[:, j]) for j in range(vc.shape[1])]
                     for i in range(zc.shape[1])])


def _top_two_gap(matrix_KF: np.ndarray) -> np.ndarray:
    """Per column: largest minus second largest entry (the largest alone when K == 1)."""
    s = np.sort(matrix_KF, axis=0)[::-1]
    return s[0] - (s[1] if len(s) > 1 else 0.0)


def mig(codes_NK: np.ndarray, factors_NF: np.ndarray, bins: int = 20,
        per_factor: bool = False):
    """Mutual information gap in [0, 1] (averaged over non-constant factors)."""
    codes_NK, factors_NF = _check(codes_NK, factors_NF)
    m = mutual_info_matrix(codes_NK, factors_NF, bins)
    vc = discretize(factors_NF, bins)
    h = np.array([entropy(vc[:, j]) for j in range(vc.shape[1])])
    gaps = _top_two_gap(m) / np.maximum(h, 1e-12)
    return gaps if per_factor else float(gaps.mean())


def sap(codes_NK: np.ndarray, factors_NF: np.ndarray, per_factor: bool = False):
    """Separated attribute predictability in [0, 1] for continuous factors."""
    codes_NK, factors_NF = _check(codes_NK, factors_NF)
    z = codes_NK - codes_NK.mean(0)
    v = factors_NF - factors_NF.mean(0)
    cov = z.T @ v / len(z)  # (K, F)
    var_z, var_v = z.var(0), v.var(0)
    score = np.where(var_z[:, None] > 1e-12, cov ** 2 / (np.maximum(var_z[:, None], 1e-12)
                                                         * var_v[None, :]), 0.0)
    gaps = _top_two_gap(score)
    return gaps if per_factor else float(gaps.mean())


def _check(codes_NK, factors_NF) -> tuple[np.ndarray, np.ndarray]:
    codes = np.asarray(codes_NK, np.float64)
    factors = np.asarray(factors_NF, np.float64)
    if codes.ndim != 2 or factors.ndim != 2 or len(codes) != len(factors):
        raise ValueError(f"expected codes (N, K) and factors (N, F) with the same N, got "
                         f"{codes.shape} and {factors.shape}")
    if len(codes) < 2:
        raise ValueError("need at least 2 samples")
    if not (np.all(np.isfinite(codes)) and np.all(np.isfinite(factors))):
        raise ValueError("codes and factors must be finite")
    keep = factors.std(0) > 1e-8
    if not keep.any():
        raise ValueError("every factor is constant in this sample")
    return codes, factors[:, keep]


def disentanglement_scores(codes_NK: np.ndarray, factors: dict[str, np.ndarray],
                           bins: int = 20) -> dict[str, float]:
    """MIG and SAP over all factor groups together and per group (``mig_<group>``...), plus
    ``mig_top5``/``sap_top5``: the mean over the 5 factors with the largest gaps.

    `factors` maps a group name (``colours``, ``state``) to (N, F_group) arrays."""
    groups = {k: np.asarray(v, np.float64).reshape(len(v), -1) for k, v in factors.items()}
    groups = {k: v for k, v in groups.items() if v.shape[1] and (v.std(0) > 1e-8).any()}
    if not groups:
        raise ValueError("no non-constant factors")
    everything = np.concatenate(list(groups.values()), 1)
    mig_f = mig(codes_NK, everything, bins, per_factor=True)
    sap_f = sap(codes_NK, everything, per_factor=True)
    # Supplementary: the 5 best-separated factors (many colour factors barely show in frames).
    out = {"mig": float(mig_f.mean()), "sap": float(sap_f.mean()),
           "mig_top5": float(np.sort(mig_f)[-5:].mean()),
           "sap_top5": float(np.sort(sap_f)[-5:].mean())}
    for name, value in groups.items():
        out[f"mig_{name}"] = mig(codes_NK, value, bins)
        out[f"sap_{name}"] = sap(codes_NK, value)
    return out


__all__ = ["discretize", "disentanglement_scores", "entropy", "mig", "mutual_info",
           "mutual_info_matrix", "sap"]
