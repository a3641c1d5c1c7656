"""Label correction for samples rejected by the dynamic loss gate.

From a configured epoch on, a rejected sample gets a new label: the argmax of
``softmax(W e_clean / T)``, ``W`` the un-normalised class weights of the AAM
head and ``e_clean`` the embedding of the un-augmented view of the same crop.
The new label is used only when its probability exceeds a threshold.
"""

import torch


def correct_labels(clean_embeddings, class_weights, temperature=0.1, p=0.5):
    """Corrected labels and which of them are confident enough to use.

    Arguments
    ---------
    clean_embeddings : torch.Tensor
        ``[n, emb]`` or ``[n, 1, emb]`` embeddings of the clean views.
    class_weights : torch.Tensor
        ``[n_classes, emb]`` un-normalised weights of the AAM head.
    temperature : float
        Softmax temperature (0.1 in the reference).
    p : float
        A corrected label is used only when its probability exceeds this.

    Returns
    -------
    labels : torch.Tensor
        ``[n]`` long, the argmax classes.
    confident : torch.Tensor
        ``[n]`` bool, probability > ``p``.
    probabilities : torch.Tensor
        ``[n]`` the argmax probabilities.

    Example
    -------
    >>> weights = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    >>> clean = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    >>> labels, confident, prob = correct_labels(clean, weights)
    >>> labels, confident
    (tensor([0, 0]), tensor([ True, False]))
    """
    if clean_embeddings.dim() == 3:
        clean_embeddings = clean_embeddings.squeeze(1)
    logits = clean_embeddings.float() @ class_weights.float().t()
    probabilities, labels = torch.softmax(logits / temperature, dim=-1).max(-1)
    return labels, probabilities > p, probabilities
