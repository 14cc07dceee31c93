"""Studies over many cells (stability over seeds, DH-Diff ablations); each runs as a module."""
