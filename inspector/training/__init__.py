"""Training and export (the `train` extra): the only part of inspector that imports torch."""
