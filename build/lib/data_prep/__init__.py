"""Data preparation: VoxCeleb, MUSAN and RIR manifests, trial lists, and the
built-in synthetic speaker corpus."""
