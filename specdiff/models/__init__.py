"""The three networks: notes encoder, context encoder and FiLM decoder (ORIGINAL.md §3).

Importing this package imports none of its modules.
"""
