"""Inference: the model folder (diffusers layout), the bundled model, Hub ids, the sampler settings
(``sampling.json``), and the full-song loop with its inputs and outputs.

Importing this package imports none of its modules.
"""
