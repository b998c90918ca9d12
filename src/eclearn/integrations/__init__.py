"""Integrations with other training stacks (optional dependencies, imported on use).

- :mod:`eclearn.integrations.lightning` — PyTorch Lightning: a ``LightningModule`` mixin
  (``pip install 'eclearn[lightning]'``).

Nothing here is imported by ``import eclearn``.
"""
