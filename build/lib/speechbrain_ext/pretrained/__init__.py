"""Pretrained models: training checkpoints, export to SpeechBrain's
pretrained interface, the inference class and conversion of the authors'
checkpoint.
"""
