"""MIDI in: the SMF reader (``reader``), MT3 event tokens (``tokenizer``), the frame-aligned score roll
(``score_roll``), pitch frequencies (``pitch``) and the bundled example files (``examples``).

Importing this package imports none of its modules.
"""
