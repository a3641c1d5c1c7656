"""Self-supervised speaker verification by fine-tuning WavLM on pseudo-labels.

The library behind the recipe: WavLM, the MHFA back-end, the pseudo-label
training components (loss gate, label correction, L2-SP, sampler,
augmentation), clustering, scoring, checkpoint conversion and the pretrained
inference interface.
"""
