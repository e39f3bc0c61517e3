"""Training: the objective, the loop, checkpoints, DDP, export; the vocoder's training.

Importing this package imports none of its modules.
"""
