"""The segmentations: where segments end, one module each."""
