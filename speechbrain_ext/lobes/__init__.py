"""Networks: WavLM, the MHFA back-end, the WavLM + MHFA embedding model,
stage 1's DINO network and the ECAPA-TDNN embedding model, the cosine
classifier head.
"""
