"""Audio: the log-mel front end (``mel``), audio files (``files``) and mel -> audio inverters
(``inverters``, ``griffin_lim``, ``phase_vocoder``, the neural ``vocoder``).

Importing this package imports none of its modules.
"""
