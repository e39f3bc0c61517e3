"""Evaluation: transcription, embeddings, metrics, the evaluate run and its plots.

Importing this package imports none of its modules.
"""
