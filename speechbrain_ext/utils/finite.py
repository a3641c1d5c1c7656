"""Nothing non-finite is trained on or saved.

Bad audio is left out where it is read (:mod:`speechbrain_ext.dataio.audio`);
what is left here are the two last lines of defence: a training step whose loss
is NaN or infinite stops the run with one line naming the batch's files
(instead of writing NaN into every weight), and a checkpoint holding a
non-finite tensor is refused (so the last good checkpoint stays the one a
re-run resumes from).

Example
-------
>>> nonfinite_tensors({"w": torch.tensor([1.0, float("nan")])})
[('w', 1)]
"""

import torch


class NonFiniteLossError(ArithmeticError):
    """Raised when a training loss is NaN or infinite."""


class NonFiniteCheckpointError(ArithmeticError):
    """Raised instead of saving a checkpoint holding NaN or infinity."""


def nonfinite_tensors(state, prefix=""):
    """Names and counts of the floating tensors with NaN/inf values.

    Arguments
    ---------
    state : dict, list, tuple or torch.Tensor
        E.g. a ``state_dict()``, nested structures allowed.
    prefix : str
        Prepended to the names.

    Returns
    -------
    list of (str, int)

    Example
    -------
    >>> nonfinite_tensors({"a": {"b": torch.tensor([float("inf")])}})
    [('a.b', 1)]
    """
    if isinstance(state, torch.Tensor):
        if not state.is_floating_point() and not state.is_complex():
            return []
        bad = int((~torch.isfinite(state)).sum())
        return [(prefix, bad)] if bad else []
    if isinstance(state, dict):
        items = state.items()
    elif isinstance(state, (list, tuple)):
        items = enumerate(state)
    else:
        return []
    found = []
    for key, value in items:
        name = f"{prefix}.{key}" if prefix else str(key)
        found.extend(nonfinite_tensors(value, name))
    return found


def recoverable_state(recoverable):
    """The tensors a checkpoint would hold for a recoverable, if known.

    Arguments
    ---------
    recoverable : object
        A Checkpointer recoverable.

    Returns
    -------
    dict or None
        The ``state_dict()`` of modules and optimizers; None otherwise.
    """
    if isinstance(recoverable, (torch.nn.Module, torch.optim.Optimizer)):
        return recoverable.state_dict()
    return None


def check_recoverables(recoverables, where):
    """Raise if a module or optimizer holds NaN or infinite values.

    Arguments
    ---------
    recoverables : dict
        Name -> recoverable (as a Checkpointer holds them).
    where : str
        The checkpoint folder, for the message.

    Raises
    ------
    NonFiniteCheckpointError
        One line naming the recoverable, the count and the first tensor.

    Example
    -------
    >>> model = torch.nn.Linear(1, 1)
    >>> with torch.no_grad():
    ...     _ = model.weight.fill_(float("nan"))
    >>> check_recoverables({"model": model}, "save")
    Traceback (most recent call last):
    ...
    speechbrain_ext.utils.finite.NonFiniteCheckpointError: save: not saving a \
checkpoint: model holds 1 NaN/infinite values (first: weight); the last \
good checkpoint is kept
    """
    for name, recoverable in recoverables.items():
        state = recoverable_state(recoverable)
        bad = nonfinite_tensors(state) if state is not None else []
        if bad:
            raise NonFiniteCheckpointError(
                f"{where}: not saving a checkpoint: {name} holds "
                f"{sum(count for _, count in bad)} NaN/infinite values "
                f"(first: {bad[0][0]}); the last good checkpoint is kept"
            )


def stop_on_nonfinite_loss(loss, step, batch_ids):
    """Raise when a training loss is NaN or infinite, naming the batch.

    Called by the Brains' ``check_loss_isfinite`` before the backward pass
    (except under fp16, where the gradient scaler skips the step of an
    overflowing loss and lowers the scale, which is normal).

    Arguments
    ---------
    loss : torch.Tensor
        The loss of the batch.
    step : int
        The step in the epoch.
    batch_ids : list of str
        The batch's item ids (file keys).

    Raises
    ------
    NonFiniteLossError
        One line: the step, the value and the first files of the batch.

    Example
    -------
    >>> stop_on_nonfinite_loss(torch.tensor(1.0), 3, ["a.wav"])
    >>> stop_on_nonfinite_loss(torch.tensor(float("nan")), 3, ["a.wav"])
    Traceback (most recent call last):
    ...
    speechbrain_ext.utils.finite.NonFiniteLossError: the training loss is nan \
at \
step 3 of the epoch (batch: a.wav); stopped before the update, the last \
good checkpoint is kept
    """
    if bool(torch.isfinite(loss)):
        return
    shown = ", ".join(map(str, batch_ids[:5]))
    more = f" (+{len(batch_ids) - 5} more)" if len(batch_ids) > 5 else ""
    raise NonFiniteLossError(
        f"the training loss is {loss.item()} at step {step} of the epoch "
        f"(batch: {shown}{more}); stopped before the update, the last good "
        "checkpoint is kept"
    )
