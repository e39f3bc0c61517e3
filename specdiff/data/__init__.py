"""Data sets: song discovery and the feature cache, SoundFont rendering, generated pieces and the demo corpus.

Importing this package imports none of its modules.
"""
