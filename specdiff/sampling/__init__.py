"""The diffusion schedule (``diffusion``) and the samplers with classifier-free guidance (``sampler``).

Importing this package imports none of its modules.
"""
