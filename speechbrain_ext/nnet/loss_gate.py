"""Dynamic loss gate: leave out samples whose loss looks like a wrong label.

At the end of every epoch a two-component 1-D Gaussian mixture is fitted to
``log(CE)`` of all training samples of that epoch (gathered over all DDP
ranks by the caller) with the reference's settings
(``GaussianMixture(2, covariance_type="full", tol=1e-5, max_iter=1000,
random_state=0)``); the threshold for the next epoch is where the two
weighted component densities cross between the two means. From
``start_epoch`` on, samples whose ``log(CE)`` is above the threshold are left
out of the loss.

``log(CE)`` must be exact (:func:`speechbrain_ext.nnet.aam.log_cross_entropy`):
float32 CE is exactly 0 for confidently classified samples, and a few
clamped values (e.g. ``log(1e-30) = -69``) make a spike that the mixture
takes as a component, with a threshold that keeps almost nothing.

A fit is *degenerate* when it gives no usable threshold (too few values, a
single value, no crossing between the means) or when its threshold would
keep less than ``min_kept_fraction`` of the epoch's samples. The gate then
keeps the previous threshold (none before the first good fit), logs a
WARNING and marks the plot; should the previous threshold itself keep less
than the floor of the epoch's samples (the losses moved up), the gate is
switched off until the next good fit. The floor, 10 % by default, tells a
gate from a tail. The gate removes the minority of samples whose
pseudo-label is wrong, relying on the low-loss component being the
correctly labelled samples the model has learned, a population. Before the
model has learned them, or when most pseudo-labels are wrong, the
mixture's low component is the thin tail of samples learned first (0.3-9 %
of the samples in such fits on the README's earlier demo corpus, whose
pseudo-labels were 63 % wrong), and a threshold there would train the next
epoch on that tail alone; a spike of clamped zero losses gave 0.03 % (issue
12). Fits that separate a population kept 19-51 % of the samples on the
demo corpus and 47-72 % on the README's second corpus (its runs there). The
lowest come right after a round's first gated epoch, when the rejected
samples' losses have risen: two such fits would have kept 18.8 and 19.9 %,
with kept samples purer than the rejected ones (0.67 against 0.60, 0.63
against 0.56), and a floor of 20 % refused them. The floor sits in the gap
between tails and populations. On the reference's schedule, a demo
round's first fit came after only 120 steps and kept 15-20 %; the demo
stretches its schedule so that it comes after the model has learnt the
population.
``min_kept_fraction: 0.0`` accepts every fit with a crossing (the reference
accepts any fit with exactly one crossing and stops otherwise).
"""

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
from speechbrain.utils.logger import get_logger

from speechbrain_ext.utils.io_utils import atomic_path, safe_torch_load

logger = get_logger(__name__)


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

    The reference's fit: ``GaussianMixture(2, covariance_type="full",
    tol=1e-5, max_iter=1000, random_state=0)``. A fit that has not
    converged after 1000 iterations is used anyway, as in the reference,
    with a warning. Non-finite values (only from non-finite logits) are left
    out.

    Arguments
    ---------
    log_losses : array-like
        1-D ``log(CE)`` values.
    random_state : int
        Seed of the mixture initialisation (0 in the reference).
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
        n_components=2,
        covariance_type="full",
        tol=1e-5,
        max_iter=1000,
        random_state=random_state,
    ).fit(x[:, None])
    if not gmm.converged_:
        logger.warning(
            "Loss gate: the mixture fit did not converge in %d iterations; "
            "using it anyway (as the reference does)",
            gmm.max_iter,
        )
    mixture = {
        "weights": [float(w) for w in gmm.weights_],
        "means": [float(m) for m in gmm.means_[:, 0]],
        "variances": [float(v) for v in gmm.covariances_[:, 0, 0]],
    }
    threshold = crossing_threshold(
        mixture["weights"], mixture["means"], mixture["variances"]
    )
    return threshold, mixture


def kept_fraction(log_losses, threshold):
    """Fraction of the values at or below ``threshold`` (kept by the gate).

    Arguments
    ---------
    log_losses : array-like
        1-D ``log(CE)`` values.
    threshold : float or None
        None keeps everything.

    Returns
    -------
    float

    Example
    -------
    >>> kept_fraction([0.0, 1.0, 2.0, 3.0], 1.5)
    0.5
    """
    x = np.asarray(log_losses, dtype=np.float64).reshape(-1)
    if threshold is None or x.size == 0:
        return 1.0
    return float(np.mean(x <= threshold))


def plot_gate(
    log_losses,
    mixture,
    threshold,
    path,
    title="",
    candidate=None,
    degenerate=None,
):
    """Write a PNG: log-loss histogram, the two weighted Gaussians, threshold.

    The legend names each Gaussian (weight, mean, standard deviation) and
    the threshold with the fraction of the plotted samples it keeps. A
    degenerate fit is drawn dashed, its rejected threshold dotted, and the
    reason is written on the plot.

    Arguments
    ---------
    log_losses : array-like
        1-D ``log(CE)`` values.
    mixture : dict or None
        ``weights``, ``means``, ``variances`` as from :func:`fit_threshold`.
    threshold : float or None
        The threshold in use for the next epoch (a red line).
    path : str
        The PNG, written atomically.
    title : str
        Plot title (e.g. ``"round1, epoch 5"``).
    candidate : float, optional
        The threshold of a degenerate fit, which is not used.
    degenerate : str, optional
        Why the fit was rejected.

    Example
    -------
    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "gate.png")
    >>> mixture = {"weights": [0.5, 0.5], "means": [-1.0, 1.0],
    ...            "variances": [0.2, 0.2]}
    >>> plot_gate(np.linspace(-2, 2, 50), mixture, 0.0, path, "epoch 1")
    >>> os.path.getsize(path) > 0
    True
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.asarray(log_losses, dtype=np.float64)
    x = x[np.isfinite(x)]
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    ax.hist(x, bins=100, density=True, color="0.75", label=f"{x.size} samples")
    if mixture is not None and x.size:
        grid = np.linspace(x.min(), x.max(), 400)
        order = np.argsort(mixture["means"])
        for rank, i in enumerate(order):
            w, m = mixture["weights"][i], mixture["means"][i]
            v = mixture["variances"][i]
            pdf = w * np.exp(-((grid - m) ** 2) / (2 * v))
            ax.plot(
                grid,
                pdf / np.sqrt(2 * np.pi * v),
                linestyle="--" if degenerate else "-",
                color=("tab:green", "tab:orange")[rank],
                label=f"{('low', 'high')[rank]}-loss Gaussian: weight "
                f"{w:.2f}, mean {m:.2f}, sd {np.sqrt(v):.2f}",
            )
    if candidate is not None and degenerate:
        ax.axvline(
            candidate,
            color="0.3",
            linestyle=":",
            label=f"rejected threshold {candidate:.3f} "
            f"(keeps {kept_fraction(x, candidate):.1%})",
        )
    if threshold is not None:
        ax.axvline(
            threshold,
            color="red",
            label=f"{'previous ' if degenerate else ''}threshold, used next: "
            f"{threshold:.3f} (keeps {kept_fraction(x, threshold):.1%})",
        )
    if degenerate:
        ax.text(
            0.5,
            0.97,
            f"DEGENERATE FIT: {degenerate}",
            transform=ax.transAxes,
            ha="center",
            va="top",
            wrap=True,
            fontsize=8,
            color="darkred",
            bbox={"facecolor": "white", "edgecolor": "darkred"},
        )
    ax.set_xlabel("log(CE) per sample (CE in nats)")
    ax.set_ylabel("density")
    ax.set_title(f"Loss gate: {title}" if title else "Loss gate")
    ax.legend(fontsize=7, loc="center right")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
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
        Seed of the mixture fit (0 in the reference).
    min_samples : int
        Fewer recorded losses than this is a degenerate fit.
    min_kept_fraction : float
        A fit whose threshold would keep less than this fraction of the
        epoch's samples is degenerate (see the module docstring); 0.0
        accepts every fit with a crossing.

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

    def __init__(
        self,
        start_epoch=5,
        random_state=0,
        min_samples=10,
        min_kept_fraction=0.1,
    ):
        self.start_epoch = start_epoch
        self.random_state = random_state
        self.min_samples = min_samples
        self.min_kept_fraction = min_kept_fraction
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
            ``[n]`` values (detached; moved to CPU float64).
        """
        self._record.append(log_losses.detach().double().cpu().reshape(-1))

    @property
    def recorded(self):
        """torch.Tensor: this epoch's log-losses so far (1-D float64)."""
        if not self._record:
            return torch.zeros(0, dtype=torch.float64)
        if len(self._record) > 1:
            self._record = [torch.cat(self._record)]
        return self._record[0]

    def end_epoch(self, epoch, plot_path=None, name=""):
        """Fit the mixture on this epoch's record, set the next threshold.

        As in the reference, the mixture is only fitted when the next epoch
        uses it (``epoch + 1 >= start_epoch``); before that the plot shows
        the histogram alone. A degenerate fit keeps the previous threshold
        (dropped when it keeps less than the floor of this epoch's
        samples), logs a WARNING with the reason and is marked on the plot.

        Arguments
        ---------
        epoch : int
            The epoch that just ended.
        plot_path : str, optional
            Where to write the histogram PNG.
        name : str
            The run's name for the plot title (e.g. ``"round1"``).

        Returns
        -------
        dict
            ``threshold`` (for the next epoch, possibly None), ``fitted``
            (whether a fit was made), ``mixture`` (the fitted one, also when
            rejected), ``candidate`` (the fitted threshold, None without a
            crossing), ``kept_fraction`` (of this epoch's losses under
            ``threshold``) and ``degenerate`` (the reason, or None).
        """
        log_losses = self.recorded.numpy()
        reason, candidate, mixture = None, None, None
        fitted = epoch + 1 >= self.start_epoch
        if fitted:
            try:
                candidate, mixture = fit_threshold(
                    log_losses, self.random_state, self.min_samples
                )
                kept = kept_fraction(log_losses, candidate)
                if kept < self.min_kept_fraction:
                    reason = (
                        f"its threshold {candidate:.3f} would keep only "
                        f"{kept:.1%} of the samples (floor "
                        f"{self.min_kept_fraction:.0%})"
                    )
            except DegenerateFitError as error:
                reason = str(error)
            if reason is None:
                self.threshold, self.mixture = candidate, mixture
            else:
                self._keep_previous(log_losses, epoch, reason, name)
        if plot_path is not None and log_losses.size:
            plot_gate(
                log_losses,
                mixture,
                self.threshold,
                plot_path,
                title=f"{name}, epoch {epoch}" if name else f"epoch {epoch}",
                candidate=candidate,
                degenerate=reason,
            )
        self._record = []
        return {
            "threshold": self.threshold,
            "fitted": fitted,
            "mixture": mixture,
            "candidate": candidate,
            "kept_fraction": kept_fraction(log_losses, self.threshold),
            "degenerate": reason,
        }

    def _keep_previous(self, log_losses, epoch, reason, name):
        """After a degenerate fit: keep the previous threshold, or drop it.

        The floor holds for the threshold in use too: one that now keeps
        less than the floor of this epoch's samples (the losses moved up) is
        dropped until the next good fit.
        """
        previous = self.threshold
        kept = kept_fraction(log_losses, previous)
        if previous is None:
            outcome = "no threshold yet"
        elif kept < self.min_kept_fraction:
            self.threshold, self.mixture = None, None
            outcome = (
                f"the previous threshold {previous:.4f} keeps only "
                f"{kept:.1%} of this epoch's samples: gate off until the "
                "next good fit"
            )
        else:
            outcome = f"keeping the previous threshold {previous:.4f}"
        logger.warning(
            "Loss gate, %sepoch %d: degenerate fit (%s); %s",
            f"{name}, " if name else "",
            epoch,
            reason,
            outcome,
        )

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
        record = state["record"].double()
        self._record = [record] if len(record) else []


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
