"""Self-supervised speaker verification by fine-tuning WavLM on pseudo-labels.

The library behind the recipe, by layer: ``lobes`` (networks: WavLM, MHFA,
the embedding models, DINO), ``nnet`` (losses and training objectives: AAM,
DINO loss, loss gate, label correction, L2-SP), ``dataio`` (audio,
augmentation, sampler, embeddings files, extraction shards),
``verification`` (extraction, scoring, metrics, clustering), ``pretrained``
(checkpoints, export, the inference class, conversion of the authors'
checkpoint) and ``utils`` (plumbing shared by the stage scripts).

Modules of the earlier flat layout that exported models name in their
``hyperparams.yaml`` / ``custom.py`` stay importable under their old paths
(with a warning), through SpeechBrain's ``deprecated_redirect``.
"""

#: Old module path -> new one, for folders exported by earlier versions.
MOVED_MODULES = {
    "speechbrain_ext.wavlm": "speechbrain_ext.lobes.wavlm",
    "speechbrain_ext.mhfa": "speechbrain_ext.lobes.mhfa",
    "speechbrain_ext.embedding_model": "speechbrain_ext.lobes.embedding_model",
    "speechbrain_ext.inference": "speechbrain_ext.pretrained.inference",
}


def _redirect_moved_modules():
    try:
        from speechbrain.utils.importutils import deprecated_redirect
    except (ImportError, OSError):
        # A broken install: the entry points' preflight says so in one line.
        return
    for old, new in MOVED_MODULES.items():
        deprecated_redirect(
            old,
            new,
            extra_reason="(a model folder exported by an earlier version; "
            "export it again to update it)",
            also_lazy_export=True,
        )


_redirect_moved_modules()
