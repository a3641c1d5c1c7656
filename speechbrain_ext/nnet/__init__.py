"""Losses and training objectives: AAM-softmax cross-entropy, the DINO loss,
the dynamic loss gate, label correction and the L2-SP regulariser.
"""
