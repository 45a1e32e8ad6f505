"""Tools over a finished export: the StableHLO bundle (the lowered modules read back from a
SavedModel, run with JAX alone on any accelerator)."""
