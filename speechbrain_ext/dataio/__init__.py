"""Data: audio reading, the reference's augmentation, the speaker-balanced
batch sampler, embeddings files and resumable extraction shards.
"""
