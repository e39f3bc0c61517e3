"""The numbers and names the whole package agrees on, in one light module (no torch, no numpy).

Every other module imports these instead of writing them again, so the front end, the tokenizer,
the data pipeline, the audio writers and the command line cannot drift apart. The old names stay
importable from where they used to live (``from specdiff.audio.mel import SAMPLE_RATE`` still works:
those modules import them from here).
"""

from __future__ import annotations

# ---- audio and the log-mel front end (ORIGINAL.md §1) ------------------------------------------

SAMPLE_RATE = 16000  #: Hz, mono
HOP_LENGTH = 320  #: samples between spectrogram frames (20 ms)
N_MELS = 128  #: mel bands per frame
FRAMES_PER_SECOND = SAMPLE_RATE // HOP_LENGTH  #: 50 spectrogram frames per second

# ---- segments (ORIGINAL.md §2, §4.2) -----------------------------------------------------------

SEGMENT_FRAMES = 256  #: spectrogram frames per segment (the decoder's target and context length)
SEGMENT_SECONDS = SEGMENT_FRAMES / FRAMES_PER_SECOND  #: 5.12 s
TOKENS_LENGTH = 2048  #: note tokens per segment, EOS included (the notes encoder's input length)

# ---- names the command line and the library share ----------------------------------------------

#: Samplers of specdiff.sampling.sampler (the first is the original).
SCHEDULERS = ("original", "ddpm", "ddim", "dpmsolver++", "unipc")
#: The samplers specdiff runs itself; the others are diffusers' schedulers (the diffusers package).
NATIVE_SCHEDULERS = ("original", "ddim")
#: Network precisions: float32 (faithful), bfloat16 (CPUs with native bf16 matmuls, GPUs), float16 (GPUs).
PRECISIONS = ("fp32", "bf16", "fp16")
#: Spectrogram inverters registered by specdiff.audio.inverters, plus "auto" (the best one a folder holds).
INVERTERS = ("auto", "onnx", "vocoder", "griffinlim")
#: How our vocoder makes audio (specdiff.audio.vocoder.VocoderConfig.synthesis): the head's own phase, or
#: a phase built from its magnitude (specdiff.audio.phase_vocoder).
VOCODER_SYNTHESES = ("network", "phase_vocoder")
#: Where the phase vocoder takes each spectral peak's frequency (specdiff.audio.vocoder.VocoderConfig.peak_frequency):
#: a parabola through the magnitude, or a network's predicted instantaneous frequency.
PEAK_FREQUENCY_RULES = ("parabola", "predicted")
#: What the peak-frequency network reads per synthesis bin (specdiff.audio.peak_frequency): the log-mel interpolated
#: onto the bin, or that plus the two mel bands around the bin and where the bin lies between their centres.
PEAK_FREQUENCY_INPUTS = ("mel", "mel+bands")
#: Devices the commands accept ("auto": cuda, else mps, else cpu).
DEVICES = ("auto", "cpu", "cuda", "mps")
#: Embeddings of the Fréchet distance registered by specdiff.evaluation.embeddings (the first is the default).
EMBEDDINGS = ("mfcc-stats", "logmel-mean", "basic-pitch")
#: Model size presets (specdiff.models.presets.PRESETS) and training presets (specdiff.training.config.TRAIN_PRESETS).
PRESET_NAMES = ("base", "small", "tiny")
TRAIN_PRESET_NAMES = PRESET_NAMES

# ---- defaults of the sampler -------------------------------------------------------------------

DEFAULT_SCHEDULER = "original"
DEFAULT_NUM_STEPS = 100
DEFAULT_GUIDANCE = 2.0
#: When classifier-free guidance acts (``sampling.json``'s ``guidance_schedule``): at ``"every"`` step (the
#: original), or at the ``"first"`` step only, its x0 offset (guided minus conditional estimate) then added to the
#: conditional estimates of the later steps, which run the conditional rows alone
#: (:class:`specdiff.sampling.sampler.GuidedDenoiser`).
GUIDANCE_SCHEDULES = ("every", "first")
DEFAULT_PRECISION = "fp32"
#: Audio writers pass samples up to this level unchanged and shape louder ones (specdiff.audio.files.soft_limit).
LIMITER_THRESHOLD = 0.9
#: ``specdiff synth --gain`` accepts gains in [-MAX_GAIN_DB, MAX_GAIN_DB] dB.
MAX_GAIN_DB = 60.0

# ---- decoder extensions (specdiff.models.decoder.FilmDecoder) -----------------------------------------

#: Decoder options beyond the original architecture, with the values that mean "the original".
#: A config.json holds them only when they differ, so an original folder's config is unchanged.
DECODER_EXTENSIONS: dict[str, object] = {
    "score_roll_features": 0,
    "prediction_type": "epsilon",
    "spec_out_bias": False,
    "score_prior": False,
    "additive_prior": False,
    "timbres": [],
    "input_context_frames": 0,
    "input_skip_frames": 0,
    "drum_decay_powers": [],
    "drum_decay_gates": [],
    "gm_programs": False,
    "timbre_drum_decays": False,
    "roll_carry_in": False,
    "release_decay_powers": [],
    "release_gain_frames": 0,
    "program_release_gains": False,
    "program_release_decays": False,
    "timbre_program_colours": False,
    "low_noise_expert_channels": 0,
    "low_noise_expert_below": 0.0,
    "low_noise_expert_anchor": "prior",
    "low_noise_expert_planes": False,
}

# ---- models on the Hugging Face Hub (specdiff.pipeline.hub) ---------------------------------------------

#: The official checkpoint of the paper (diffusers layout, with the ONNX inverter in melgan/).
OFFICIAL_MODEL_ID = "google/music-spectrogram-diffusion"
#: How to get huggingface_hub, which Hub ids need.
HUB_EXTRA_INSTALL = "pip install 'specdiff[hub]' (or pip install huggingface_hub)"

# ---- limits on MIDI input (specdiff.midi.reader; overridable per call) ---------------------------------

DEFAULT_MAX_MIDI_BYTES = 64 * 1024 * 1024  #: largest MIDI file read
DEFAULT_MAX_MIDI_NOTES = 2_000_000  #: most notes in one file
#: Most events in one file, of every kind: notes, pedal and other controllers, pitch bends, meta
#: events, sysex. Bounds the parse of a file full of events that make no notes (a pedal storm).
DEFAULT_MAX_MIDI_EVENTS = 4_000_000
DEFAULT_MAX_MIDI_SECONDS = 6 * 3600.0  #: longest music (NoteSequence total_time)
#: Events parsed between two calls of a parse's ``check_cancelled`` hook (cancellation, deadlines).
MIDI_CHECK_EVERY_EVENTS = 4096
