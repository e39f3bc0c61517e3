"""Inference: the model folder (diffusers layout), the bundled model, Hub ids and the full-song loop.

Importing this package imports none of its modules.
"""
