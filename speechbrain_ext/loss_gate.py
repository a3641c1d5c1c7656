"""Dynamic loss gate: leave out samples whose loss looks like a wrong label.

At the end of every epoch a two-component 1-D Gaussian mixture is fitted to
``log(CE)`` of all training samples of that epoch (gathered over all DDP
ranks by the caller); the threshold for the next epoch is where the two
weighted component densities cross between the two means. From
``start_epoch`` on, samples whose ``log(CE)`` is above the threshold are left
out of the loss.
"""

import logging
import math
import os

import numpy as np
import torch
from sklearn.mixture import GaussianMixture
from speechbrain.utils.checkpoints import (
    mark_as_loader,
    mark_as_saver,
    register_checkpoint_hooks,
)

from speechbrain_ext.io_utils import atomic_path, safe_torch_load

logger = logging.getLogger(__name__)


class DegenerateFitError(ValueError):
    """Raised when the mixture fit gives no usable threshold."""


def crossing_threshold(weights, means, variances):
    """Where two weighted 1-D Gaussian densities cross between their means.

    Solves ``w1 N(x; m1, v1) = w2 N(x; m2, v2)``, a quadratic in ``x``, and
    returns the root between the means.

    Arguments
    ---------
    weights : sequence of float
        The two mixture weights.
    means : sequence of float
        The two means (any order).
    variances : sequence of float
        The two variances.

    Returns
    -------
    float
        The crossing point.

    Raises
    ------
    DegenerateFitError
        If the means coincide, a variance is not positive, or no crossing
        lies between the means.

    Example
    -------
    >>> crossing_threshold([0.5, 0.5], [0.0, 2.0], [1.0, 1.0])
    1.0
    >>> round(crossing_threshold([0.7, 0.3], [0.0, 2.0], [1.0, 1.0]), 4)
    1.4236
    """
    (w1, w2), (m1, m2), (v1, v2) = weights, means, variances
    if m1 > m2:
        w1, w2, m1, m2, v1, v2 = w2, w1, m2, m1, v2, v1
    if not (min(v1, v2) > 0 and min(w1, w2) > 0):
        raise DegenerateFitError(
            f"non-positive variance or weight (variances {v1:.3g}, {v2:.3g}; "
            f"weights {w1:.3g}, {w2:.3g})"
        )
    if m2 - m1 <= 1e-9 * max(1.0, abs(m1)):
        raise DegenerateFitError(f"the two means coincide ({m1:.4g})")
    a = 1.0 / (2 * v2) - 1.0 / (2 * v1)
    b = m1 / v1 - m2 / v2
    c = (
        m2**2 / (2 * v2)
        - m1**2 / (2 * v1)
        + math.log(w1 / w2)
        - 0.5 * math.log(v1 / v2)
    )
    if abs(a) < 1e-12 * max(abs(b), 1e-300):
        roots = [-c / b]
    else:
        disc = b * b - 4 * a * c
        if disc < 0:
            raise DegenerateFitError("the weighted densities never cross")
        sq = math.sqrt(disc)
        roots = [(-b - sq) / (2 * a), (-b + sq) / (2 * a)]
    between = [float(r) for r in roots if m1 <= r <= m2]
    if not between:
        raise DegenerateFitError(
            f"no crossing between the means {m1:.4g} and {m2:.4g} "
            f"(roots {', '.join(f'{r:.4g}' for r in roots)})"
        )
    return between[0]


def fit_threshold(log_losses, random_state=0, min_samples=10):
    """Fit the 2-component mixture to log-losses and return its threshold.

    Arguments
    ---------
    log_losses : array-like
        1-D ``log(CE)`` values.
    random_state : int
        Seed of the mixture initialisation.
    min_samples : int
        Fewer finite values than this is a degenerate fit.

    Returns
    -------
    threshold : float
        The crossing between the component means.
    mixture : dict
        ``weights``, ``means``, ``variances`` (lists of two floats).

    Raises
    ------
    DegenerateFitError
        If there are too few values or the fit has no usable crossing.

    Example
    -------
    >>> rng = np.random.default_rng(0)
    >>> x = np.concatenate([rng.normal(-2, 0.5, 500), rng.normal(2, 0.5, 500)])
    >>> threshold, mixture = fit_threshold(x)
    >>> abs(threshold) < 0.2
    True
    """
    x = np.asarray(log_losses, dtype=np.float64).reshape(-1)
    x = x[np.isfinite(x)]
    if x.size < min_samples:
        raise DegenerateFitError(
            f"only {x.size} finite losses (need {min_samples})"
        )
    if np.ptp(x) <= 1e-12:
        raise DegenerateFitError("all losses are equal")
    gmm = GaussianMixture(
        n_components=2, covariance_type="full", random_state=random_state
    ).fit(x[:, None])
    if not gmm.converged_:
        raise DegenerateFitError("the mixture fit did not converge")
    mixture = {
        "weights": [float(w) for w in gmm.weights_],
        "means": [float(m) for m in gmm.means_[:, 0]],
        "variances": [float(v) for v in gmm.covariances_[:, 0, 0]],
    }
    threshold = crossing_threshold(
        mixture["weights"], mixture["means"], mixture["variances"]
    )
    return threshold, mixture


def plot_gate(log_losses, mixture, threshold, path, title=""):
    """Write a PNG: log-loss histogram, the two weighted Gaussians, threshold.

    Arguments
    ---------
    log_losses : array-like
        1-D ``log(CE)`` values.
    mixture : dict or None
        ``weights``, ``means``, ``variances`` as from :func:`fit_threshold`.
    threshold : float or None
        Drawn as a vertical line when given.
    path : str
        The PNG, written atomically.
    title : str
        Plot title.

    Example
    -------
    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "gate.png")
    >>> mixture = {"weights": [0.5, 0.5], "means": [-1.0, 1.0],
    ...            "variances": [0.2, 0.2]}
    >>> plot_gate(np.linspace(-2, 2, 50), mixture, 0.0, path)
    >>> os.path.getsize(path) > 0
    True
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.asarray(log_losses, dtype=np.float64)
    x = x[np.isfinite(x)]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.hist(x, bins=100, density=True, color="0.7", label="log(CE)")
    if mixture is not None and x.size:
        grid = np.linspace(x.min(), x.max(), 400)
        for w, m, v in zip(
            mixture["weights"], mixture["means"], mixture["variances"]
        ):
            pdf = w * np.exp(-((grid - m) ** 2) / (2 * v))
            ax.plot(grid, pdf / np.sqrt(2 * np.pi * v))
    if threshold is not None:
        ax.axvline(threshold, color="red", label=f"threshold {threshold:.3f}")
    ax.set_xlabel("log(CE)")
    ax.set_ylabel("density")
    ax.set_title(title)
    ax.legend()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)


@register_checkpoint_hooks
class DynamicLossGate:
    """Per-epoch record of log-losses and the threshold derived from it.

    The caller records every sample's ``log(CE)`` (the same values on every
    DDP rank, i.e. gathered), asks :meth:`keep_mask` which to keep, and calls
    :meth:`end_epoch` after the epoch. The record and the threshold are saved
    in checkpoints, so an interrupted epoch resumes with the losses it had.

    Arguments
    ---------
    start_epoch : int
        First epoch (1-based) in which samples are left out.
    random_state : int
        Seed of the mixture fit.
    min_samples : int
        Fewer recorded losses than this is a degenerate fit.

    Example
    -------
    >>> gate = DynamicLossGate(start_epoch=2)
    >>> gate.record(torch.cat([torch.randn(100) - 3, torch.randn(100) + 3]))
    >>> info = gate.end_epoch(1)
    >>> abs(gate.threshold) < 1.0
    True
    >>> gate.keep_mask(torch.tensor([-3.0, 3.0]), epoch=2)
    tensor([ True, False])
    >>> gate.keep_mask(torch.tensor([-3.0, 3.0]), epoch=1)
    tensor([True, True])
    """

    def __init__(self, start_epoch=5, random_state=0, min_samples=10):
        self.start_epoch = start_epoch
        self.random_state = random_state
        self.min_samples = min_samples
        self.threshold = None
        self.mixture = None
        self._record = []

    def active(self, epoch):
        """Whether samples are left out in ``epoch``.

        Arguments
        ---------
        epoch : int
            1-based epoch.

        Returns
        -------
        bool
        """
        return epoch >= self.start_epoch and self.threshold is not None

    def keep_mask(self, log_losses, epoch):
        """Which samples to keep in the loss.

        Arguments
        ---------
        log_losses : torch.Tensor
            ``[batch]`` ``log(CE)``.
        epoch : int
            1-based epoch.

        Returns
        -------
        torch.Tensor
            ``[batch]`` bool; all True when the gate is not active.
        """
        if not self.active(epoch):
            return torch.ones_like(log_losses, dtype=torch.bool)
        return log_losses <= self.threshold

    def record(self, log_losses):
        """Add one batch of log-losses to this epoch's record.

        Arguments
        ---------
        log_losses : torch.Tensor
            ``[n]`` values (detached; moved to CPU float32).
        """
        self._record.append(log_losses.detach().float().cpu().reshape(-1))

    @property
    def recorded(self):
        """torch.Tensor: this epoch's log-losses so far (1-D)."""
        if not self._record:
            return torch.zeros(0)
        if len(self._record) > 1:
            self._record = [torch.cat(self._record)]
        return self._record[0]

    def end_epoch(self, epoch, plot_path=None):
        """Fit the mixture on this epoch's record, set the next threshold.

        A degenerate fit keeps the previous threshold and logs why.

        Arguments
        ---------
        epoch : int
            The epoch that just ended.
        plot_path : str, optional
            Where to write the histogram PNG.

        Returns
        -------
        dict
            ``threshold`` (for the next epoch, possibly None), ``mixture``
            and ``degenerate`` (the reason, or None).
        """
        log_losses = self.recorded.numpy()
        reason = None
        try:
            self.threshold, self.mixture = fit_threshold(
                log_losses, self.random_state, self.min_samples
            )
        except DegenerateFitError as error:
            reason = str(error)
            logger.warning(
                "Loss gate, epoch %d: degenerate fit (%s); keeping the "
                "previous threshold %s",
                epoch,
                reason,
                self.threshold,
            )
        if plot_path is not None and log_losses.size:
            plot_gate(
                log_losses,
                self.mixture if reason is None else None,
                self.threshold,
                plot_path,
                title=f"epoch {epoch}",
            )
        self._record = []
        return {
            "threshold": self.threshold,
            "mixture": self.mixture,
            "degenerate": reason,
        }

    @mark_as_saver
    def save(self, path):
        """Save threshold, mixture and the record of the running epoch.

        Arguments
        ---------
        path : str
            File to write.
        """
        state = {
            "threshold": self.threshold,
            "mixture": self.mixture,
            "record": self.recorded.clone(),
        }
        torch.save(state, path)

    @mark_as_loader
    def load(self, path, end_of_epoch=False):
        """Restore the state written by :meth:`save`.

        Arguments
        ---------
        path : str
            File to read.
        end_of_epoch : bool
            Unused (the record is empty at the end of an epoch).
        """
        del end_of_epoch
        state = safe_torch_load(path)
        self.threshold = state["threshold"]
        self.mixture = state["mixture"]
        self._record = [state["record"]] if len(state["record"]) else []


def default_plot_path(folder, epoch):
    """The per-epoch plot file name.

    Arguments
    ---------
    folder : str
        Output folder.
    epoch : int
        1-based epoch.

    Returns
    -------
    str

    Example
    -------
    >>> default_plot_path("out", 3)
    'out/loss_gate_epoch003.png'
    """
    return os.path.join(folder, f"loss_gate_epoch{epoch:03d}.png")
