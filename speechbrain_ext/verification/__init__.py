"""Verification: embedding extraction, trial scoring, EER/minDCF, clustering
into pseudo-labels and pseudo-label diagnostics.
"""
