"""The additive score prior: each sounding note's spectrum, summed as power (a decoder extension).

The linear score prior (``FilmDecoder``'s ``score_prior_projection``) maps a frame's roll to a log-mel
estimate with one matrix, so the notes of a chord add their *log* spectra: a frame with a kick, a bass
note and a four-note chord gets six log offsets stacked on each other, where the audio's spectrum is the
*sum* of six spectra (about the loudest one in each band). A least-squares fit of that map overshoots
dense frames and undershoots sparse ones (measured: the frames it calls loudest come out 0.9 nat, 8 dB,
over the truth; ``benchmarks/results/additive_prior.md``).

This module is a small additive synthesiser instead. Each tonal roll feature (kind ``onset`` / ``sustain`` /
``decay`` of a family and a pitch, ``specdiff.midi.score_roll``) contributes the power spectrum ``exp(P[kind, pitch]
+ F[kind, family] + a * v_family)``: a per-pitch log template, a per-family log colour, and the family's relative
log velocity (the roll's velocity columns) times a per-band slope; drum features their own template per drum pitch,
the shared per-pitch, per-family and release columns one template each; on the program layout
(``score_roll.PROGRAM_ROLL_FEATURES``) each family's colour also gets the mean of per-program colours over its
programs sounding in the frame (the programs of a GM family differ:
``benchmarks/results/program_colours_timgm6mb.md``), and with ``colour_timbres`` each timbre its own offsets on
them per tonal kind (a SoundFont's program differs from another's: with colours shared by TimGM6mb and FluidR3_GM
the bundled prior drew a FluidR3_GM piano line 3.1 nat under its render in the top 32 mel bins, TimGM6mb's 0.3, and a
chorale's voices in bins 64-95 0.7 nat under TimGM6mb's render and 0.65 over FluidR3_GM's;
``benchmarks/results/timbre_bands_colours.md``). With ``drum_decay_powers`` the drum decay envelope ``d = exp(-t
/ 5 frames)`` also drives faster decays ``d ** k``, each with its own template per drum pitch. Why: the
power-weighted envelope lets a drum's log-mel fall by only 0.1 nat per frame, where a TimGM6mb hit falls about 1 nat
per frame (``benchmarks/results/drum_decay_idioms_0130.md``); a fitted mix of rates lets each drum and band find its
own (measured: the hit frames reach the render's level; the tails stay slow where the training music has few drums
alone). With ``timbres`` each timbre gets a log offset on every drum decay template (``timbre_drum_decays``,
zero-started), so a SoundFont whose drums stop dead and one whose drums ring can each have their own tail: one rate
mix for both fitted neither (5-9 frames after a drum hit with no tonal note, TimGM6mb's render sits at -5.8 nat,
FluidR3_GM's at -2.8; the shared fit at -2.9; ``benchmarks/results/drum_decay_idioms_0130.md``). With
``drum_decay_gates`` a hit also drives boxes over its first k frames, each with its own template per drum pitch:
TimGM6mb's drums are gated samples, loud for a few frames and then digitally silent within one (a lone snare: -3.2
nat 8 frames after the hit, the floor at 10), which no mix of exponential decays can follow. With
``release_decay_powers`` the release decays after a note's end also drive faster decays ``r ** k`` on templates of
their own (and per-timbre offsets on all release templates): the roll's fastest release ``exp(-t / 5 frames)`` lets
the log-mel fall 0.1 nat per frame, where a TimGM6mb chord's release falls about 0.6 (a chorale's fermata: -1 to
-7.6 nat in 11 frames, ``benchmarks/results/release_tails.md``). With ``release_gain_frames`` K a released note also
keeps its own held spectrum (its family's and pitch's ``sustain`` templates) under a gain per family and frame after
its end, ``G[f, t]`` for t < K (plus a per-timbre offset), so each family's release is the note it ends, fading at
its own rate: the release columns' templates are one spectrum per pitch or per family, whatever the note was, and
exponential in time, where a TimGM6mb piano rings on at its held level and a brass chord or a bass note falls 0.7-1
nat per frame to digital silence (``benchmarks/results/release_tails_bundled.md``). The roll has the release per
pitch and per family, not per note: a (family, pitch) pair counts as released ``max(t_family, t_pitch)`` frames ago,
which is exact for notes that end alone or together. With ``program_release`` (program layout) the gains also get a
log offset per GM program and frame, for each family the mean offset of its programs heard so far in the segment
(:func:`programs_heard`): the programs of one family release very differently (TimGM6mb's drawbar organ is silent 12
frames after its note-off, its church organ after 33, ``benchmarks/results/program_release_lengths.md``), and the
roll's program columns are 0 once a note has ended. Contributions are weighted by the roll's envelope values, summed
with a floor (one for frames the roll calls silent, one for the others), and turned into a log-mel by ``0.5 ln``
(mel magnitudes from summed power). The context-level columns, when the layout has them, add a linear log-domain
offset (they say how loud the previous segment was, a gain, not a source).

All parameters are in natural-log mel units; :meth:`AdditivePrior.forward` returns the decoder's
scaled units. ``specdiff.training.prior_fit.fit_additive_prior`` fits it on training windows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from specdiff.audio.mel import scale_features
from specdiff.midi.score_roll import (
    CONTEXT_LEVEL_FEATURES,
    CONTEXT_ROLL_FEATURES,
    DRUM_DECAY_FRAMES,
    DRUM_DECAY_SPAN,
    DRUM_FEATURES,
    DRUM_KINDS,
    EXTENDED_LAYOUTS,
    EXTENDED_ROLL_FEATURES,
    NUM_FAMILIES,
    NUM_PITCHES,
    NUM_PROGRAMS,
    PROGRAM_ROLL_FEATURES,
    RELEASE_FEATURES,
    RELEASE_FRAMES,
    SILENT_FEATURE,
    TONAL_FEATURES,
    TONAL_KINDS,
    VELOCITY_LAYOUTS,
    VELOCITY_ROLL_FEATURES,
    release_feature,
)
from specdiff.midi.velocity_roll import DRUM_VELOCITY_COLUMN

#: Shared columns of the extended layout between the drum block and the silent flag: per pitch, per
#: family and the release decays; each gets one power template.
SHARED_SOURCE_FEATURES = SILENT_FEATURE - TONAL_FEATURES - DRUM_FEATURES
#: The release decays are the last :data:`RELEASE_FEATURES` of them.
RELEASE_SOURCE_START = SHARED_SOURCE_FEATURES - RELEASE_FEATURES
#: Initial values (natural-log mel): templates start quiet, the floors at the mel floor's neighbourhood.
INITIAL_TEMPLATE_NAT = -1.0
INITIAL_SHARED_NAT = -3.0
INITIAL_FLOOR_NAT = -10.0
#: Initial release gains (log power under the note's held spectrum, per frame after its end): a drop of
#: 1 nat of log-mel at the end, then 0.5 nat per frame, near a TimGM6mb chord's release; the fit then moves them.
INITIAL_RELEASE_GAIN_LOG_POWER = -2.0
INITIAL_RELEASE_GAIN_SLOPE = -1.0
#: The release gain of a note ended more than ``release_gain_frames`` ago (or never), and a release template
#: switched off: no power at all.
NO_RELEASE_LOG_POWER = -80.0
#: The release time constant (frames) whose roll columns time the release gains: exp(-t / 20) stays far above
#: float32's and bfloat16's smallest numbers for hundreds of frames.
RELEASE_GAIN_CLOCK = 20.0


def check_drum_decay_gates(gates: Sequence[int]) -> None:
    """Raise ValueError unless ``gates`` are distinct whole frame counts from 1 to the drum decay's span."""
    values = list(gates)
    bad = any(isinstance(k, bool) or int(k) != k or not 1 <= int(k) <= DRUM_DECAY_SPAN for k in values)
    if bad or len(set(values)) != len(values):
        raise ValueError(f"drum_decay_gates must be distinct frame counts in 1..{DRUM_DECAY_SPAN}, got {values}")


#: The two kinds of release columns of the roll (per time constant: one per pitch, then one per family).
RELEASE_COLUMN_KINDS = ("pitch", "family")


def release_template_rows(kind: str) -> list[slice]:
    """The rows of ``shared_templates`` that hold the release columns' templates of ``kind`` (``"pitch"`` or
    ``"family"``), one slice per release time constant."""
    if kind not in RELEASE_COLUMN_KINDS:
        raise ValueError(f"release column kind must be one of {RELEASE_COLUMN_KINDS}, got {kind!r}")
    size = NUM_PITCHES if kind == "pitch" else NUM_FAMILIES
    offset = 0 if kind == "pitch" else NUM_PITCHES
    starts = [release_feature(k, pitch=0) - TONAL_FEATURES - DRUM_FEATURES + offset for k in range(len(RELEASE_FRAMES))]
    return [slice(start, start + size) for start in starts]


def check_release_gain_frames(frames: int) -> None:
    """Raise ValueError unless ``frames`` is a whole number of frames from 0 (off) to 250 (5 s)."""
    if isinstance(frames, bool) or int(frames) != frames or not 0 <= int(frames) <= 250:
        raise ValueError(f"release_gain_frames must be a frame count in 0..250, got {frames!r}")


def check_drum_decay_powers(powers: Sequence[float], name: str = "drum_decay_powers") -> None:
    """Raise ValueError unless ``powers`` are distinct numbers above 1 (faster than the roll's own decay)."""
    values = [float(k) for k in powers]
    if any(not k > 1.0 for k in values) or len(set(values)) != len(values):
        raise ValueError(f"{name} must be distinct numbers above 1, got {list(powers)}")


class AdditivePrior(nn.Module):
    """``roll [B, T, F] -> log-mel estimate [B, T, bins]`` in scaled units (see the module docstring).

    ``roll_features``: the roll layout (``score_roll.ROLL_LAYOUTS``; the extended ones only, as the
    prior needs the ``silent`` flag); the context-level and velocity columns are used when present.
    ``drum_decay_powers``: the powers ``k > 1`` of the drum decay envelope that get templates of their own
    (none: the drum decay has one rate, as before the option existed). ``timbres`` > 0: that many timbres
    get their own log offsets on the drum decay templates (``timbre_drum_decays``; 0: shared by all).
    ``release_decay_powers``: the same for the release decays (``fast_release_templates``), whose templates
    then also get per-timbre offsets when ``timbres`` > 0 (``timbre_release_decays``). ``release_gain_frames``
    K > 0: released notes keep their held spectrum under a gain per family and frame for K frames
    (``release_gains``, and per timbre ``timbre_release_gains`` when ``timbres`` > 0). ``program_release``: those
    gains also get a zero-started log offset per GM program (``program_release_gains``; the program layout).
    ``program_release_decays``: the per-family release decay templates get a zero-started log offset per GM
    program and release time constant (``program_release_decays``; the program layout). ``colour_timbres`` > 0:
    that many timbres get their own zero-started log offsets on the program colours, per tonal kind
    (``timbre_program_colours``; the program layout): one SoundFont's piano is not another's, and shared colours
    fit the mean of the two."""

    def __init__(
        self,
        roll_features: int,
        bins: int = 128,
        drum_decay_powers: Sequence[float] = (),
        timbres: int = 0,
        drum_decay_gates: Sequence[int] = (),
        release_decay_powers: Sequence[float] = (),
        release_gain_frames: int = 0,
        program_release: bool = False,
        program_release_decays: bool = False,
        colour_timbres: int = 0,
    ) -> None:
        super().__init__()
        if roll_features not in EXTENDED_LAYOUTS:
            raise ValueError(f"the additive prior needs an extended roll layout, got {roll_features} features")
        check_drum_decay_powers(drum_decay_powers)
        self.roll_features = int(roll_features)
        self.drum_decay_powers = tuple(float(k) for k in drum_decay_powers)
        check_drum_decay_gates(drum_decay_gates)
        self.drum_decay_gates = tuple(int(k) for k in drum_decay_gates)
        check_drum_decay_powers(release_decay_powers, "release_decay_powers")
        self.release_decay_powers = tuple(float(k) for k in release_decay_powers)
        # twice the log-magnitude = log power
        self.pitch_templates = nn.Parameter(torch.full((len(TONAL_KINDS), NUM_PITCHES, bins), 2 * INITIAL_TEMPLATE_NAT))
        self.family_colours = nn.Parameter(torch.zeros(len(TONAL_KINDS), NUM_FAMILIES, bins))
        self.drum_templates = nn.Parameter(torch.full((len(DRUM_KINDS), NUM_PITCHES, bins), 2 * INITIAL_TEMPLATE_NAT))
        self.fast_drum_templates = None
        if self.drum_decay_powers:
            self.fast_drum_templates = nn.Parameter(
                torch.full((len(self.drum_decay_powers), NUM_PITCHES, bins), 2 * INITIAL_TEMPLATE_NAT)
            )
        self.gate_drum_templates = None
        if self.drum_decay_gates:
            self.gate_drum_templates = nn.Parameter(
                torch.full((len(self.drum_decay_gates), NUM_PITCHES, bins), 2 * INITIAL_TEMPLATE_NAT)
            )
        self.timbre_drum_decays = None
        if timbres:  # zero: a warm start from the shared decays is exact
            envelopes = 1 + len(self.drum_decay_powers) + len(self.drum_decay_gates)
            self.timbre_drum_decays = nn.Parameter(torch.zeros(int(timbres), envelopes, NUM_PITCHES, bins))
        self.shared_templates = nn.Parameter(torch.full((SHARED_SOURCE_FEATURES, bins), 2 * INITIAL_SHARED_NAT))
        self.fast_release_templates = self.timbre_release_decays = None
        if self.release_decay_powers:
            self.fast_release_templates = nn.Parameter(
                torch.full((len(self.release_decay_powers), RELEASE_FEATURES, bins), 2 * INITIAL_SHARED_NAT)
            )
            if timbres:  # zero: a warm start from the shared release templates is exact
                envelopes = 1 + len(self.release_decay_powers)
                self.timbre_release_decays = nn.Parameter(torch.zeros(int(timbres), envelopes, RELEASE_FEATURES, bins))
        check_release_gain_frames(release_gain_frames)
        self.release_gain_frames = int(release_gain_frames)
        self.release_gains = self.timbre_release_gains = None
        if self.release_gain_frames:
            # a Python list, not torch.arange: under the loader's meta device arange imports torch._dynamo
            frames = range(self.release_gain_frames)
            start = [INITIAL_RELEASE_GAIN_LOG_POWER + INITIAL_RELEASE_GAIN_SLOPE * k for k in frames]
            self.release_gains = nn.Parameter(torch.tensor([start] * NUM_FAMILIES))
            if timbres:  # zero: each timbre starts with the shared gains
                self.timbre_release_gains = nn.Parameter(torch.zeros(int(timbres), NUM_FAMILIES, len(start)))
        self._add_program_tables(bins, program_release, program_release_decays, colour_timbres)
        self.velocity_slope = nn.Parameter(torch.full((bins,), 2.0))  # log power per unit ln(v / v_max)
        self.floors = nn.Parameter(torch.full((2, bins), 2 * INITIAL_FLOOR_NAT))  # [sounding, silent]
        self.context_level = None
        if roll_features >= CONTEXT_ROLL_FEATURES:
            self.context_level = nn.Linear(CONTEXT_LEVEL_FEATURES, bins)
            nn.init.zeros_(self.context_level.weight)
            nn.init.zeros_(self.context_level.bias)

    def _add_program_tables(
        self, bins: int, program_release: bool, program_release_decays: bool, colour_timbres: int
    ) -> None:
        """The per-GM-program parameters of the program layout, all zero-started (a warm start from a prior
        without them is exact): the program colours (always on that layout), and on request the release gains'
        and release decays' program offsets and each timbre's offsets on the colours."""
        program_layout = self.roll_features == PROGRAM_ROLL_FEATURES
        self.program_colours = nn.Parameter(torch.zeros(NUM_PROGRAMS, bins)) if program_layout else None
        self.program_release_gains = self.program_release_decays = self.timbre_program_colours = None
        if program_release:
            if not self.release_gain_frames or not program_layout:
                raise ValueError("program_release needs release_gain_frames and the program roll layout")
            self.program_release_gains = nn.Parameter(torch.zeros(NUM_PROGRAMS, self.release_gain_frames))
        if program_release_decays:
            if not program_layout:
                raise ValueError("program_release_decays needs the program roll layout")
            self.program_release_decays = nn.Parameter(torch.zeros(NUM_PROGRAMS, len(RELEASE_FRAMES)))
        if colour_timbres:
            if not program_layout:
                raise ValueError("per-timbre program colours need the program roll layout")
            shape = (int(colour_timbres), len(TONAL_KINDS), NUM_PROGRAMS, bins)
            self.timbre_program_colours = nn.Parameter(torch.zeros(shape))

    @property
    def reads_heard(self) -> bool:
        """Whether an extension reads the programs heard so far in the segment (:func:`programs_heard`)."""
        return self.program_release_gains is not None or self.program_release_decays is not None

    def log_power(self, roll: Tensor, timbre: Tensor | None = None, heard: Tensor | None = None) -> Tensor:
        """``[N, F]`` float32 roll rows -> ``[N, bins]`` log power of the summed sources and floor
        (computed in float32 whatever the parameters' dtype: the sum spans ~20 nat). ``timbre``: ``[N]``
        timbre indices of the rows (None: timbre 0), used by ``timbre_drum_decays``. ``heard``: ``[N, 128]``
        :func:`programs_heard` of the rows, read by ``program_release_gains`` and ``program_release_decays`` (None:
        the rows' own program columns)."""
        rows = roll.shape[0]
        kinds, families = len(TONAL_KINDS), NUM_FAMILIES
        pitch_templates, slope = self.pitch_templates.float(), self.velocity_slope.float()
        tonal = roll[:, :TONAL_FEATURES].reshape(rows, kinds, families, NUM_PITCHES)
        if self.roll_features in VELOCITY_LAYOUTS:
            velocity = roll[:, CONTEXT_ROLL_FEATURES:VELOCITY_ROLL_FEATURES]
            family_velocity = velocity[:, :families]
            drum_velocity = velocity[:, DRUM_VELOCITY_COLUMN : DRUM_VELOCITY_COLUMN + 1]
        else:
            family_velocity = roll.new_zeros(rows, families)
            drum_velocity = roll.new_zeros(rows, 1)
        # sum over pitches first (the envelope-weighted pitch templates of each kind and family), with the
        # templates' maximum taken out of the exponential so that it cannot overflow
        top = pitch_templates.amax(dim=1, keepdim=True).detach()  # [K, 1, bins]
        per_family = torch.einsum("nkfp,kpb->nkfb", tonal, torch.exp(pitch_templates - top))
        gain = self.family_colours.float()[None] + top[None] + slope * family_velocity[:, None, :, None]
        if self.program_colours is not None:
            programs = roll[:, VELOCITY_ROLL_FEATURES:PROGRAM_ROLL_FEATURES]
            gain = gain + self._program_colour(programs)[:, None]
            if self.timbre_program_colours is not None:
                gain = gain + self._timbre_program_colour(programs, timbre)
        power = (per_family * torch.exp(gain)).sum(dim=(1, 2))
        drums = roll[:, TONAL_FEATURES : TONAL_FEATURES + DRUM_FEATURES].reshape(rows, len(DRUM_KINDS), NUM_PITCHES)
        drum_power = self._drum_power(drums, timbre)
        power = power + drum_power * torch.exp(slope * drum_velocity)
        if heard is None and self.reads_heard:  # rows without the frame order: their own program columns
            heard = roll[:, VELOCITY_ROLL_FEATURES:PROGRAM_ROLL_FEATURES]
        shared = roll[:, TONAL_FEATURES + DRUM_FEATURES : SILENT_FEATURE]
        if self.program_release_decays is not None:
            shared = self._program_scaled_releases(shared, heard)
        power = power + self._shared_power(shared, timbre)
        if self.release_gains is not None:
            sustain = TONAL_KINDS.index("sustain")
            spectra = torch.exp(pitch_templates[sustain] - top[sustain])  # [P, bins]
            colours = torch.exp(self.family_colours.float()[sustain] + top[sustain])  # [families, bins]
            power = power + self._released_power(roll, timbre, spectra, colours, heard)
        silent = roll[:, SILENT_FEATURE : SILENT_FEATURE + 1]
        floors = torch.exp(self.floors.float())
        power = power + floors[0] * (1.0 - silent) + floors[1] * silent
        return torch.log(power)

    def _extra_envelopes(self, drums: Tensor) -> Tensor:
        """``[N, kinds, P]`` drum roll -> ``[N, powers + gates, P]``: the decay envelope raised to each power,
        then each gate (1 over the hit's first k frames, read off the envelope exp(-t / 5), else 0)."""
        decay = drums[:, DRUM_KINDS.index("decay")].clamp(min=0.0)
        powers = [decay**power for power in self.drum_decay_powers]
        gates = [(decay > math.exp(-(k - 0.5) / DRUM_DECAY_FRAMES)).to(decay.dtype) for k in self.drum_decay_gates]
        return torch.stack(powers + gates, dim=1)

    def _extra_templates(self) -> Tensor | None:
        """The log-power templates of :meth:`_extra_envelopes`, ``[powers + gates, P, bins]`` (None: none)."""
        parts = [t.float() for t in (self.fast_drum_templates, self.gate_drum_templates) if t is not None]
        return torch.cat(parts) if parts else None

    def _drum_power(self, drums: Tensor, timbre: Tensor | None) -> Tensor:
        """``[N, kinds, P]`` drum roll, ``[N]`` timbres -> ``[N, bins]`` drum power: the onset templates,
        and the decay envelopes (the roll's, its powers, the gates) on their templates, with each row's
        timbre offsets on the latter when the prior has ``timbre_drum_decays``."""
        onset, decay = DRUM_KINDS.index("onset"), DRUM_KINDS.index("decay")
        templates = self.drum_templates.float()
        power = drums[:, onset] @ torch.exp(templates[onset])
        rates, decay_templates = drums[:, decay : decay + 1], templates[decay : decay + 1]
        extra = self._extra_templates()
        if extra is not None:
            rates = torch.cat([rates, self._extra_envelopes(drums)], dim=1)
            decay_templates = torch.cat([decay_templates, extra])
        return power + _envelope_power(rates, decay_templates, self.timbre_drum_decays, timbre)

    def _shared_power(self, shared: Tensor, timbre: Tensor | None) -> Tensor:
        """``[N, SHARED_SOURCE_FEATURES]`` shared roll columns -> ``[N, bins]`` power: one template each,
        and with ``release_decay_powers`` the release decays also raised to each power on templates of their
        own (with each row's timbre offsets when the prior has ``timbre_release_decays``)."""
        templates = self.shared_templates.float()
        if self.fast_release_templates is None:
            return shared @ torch.exp(templates)
        start = RELEASE_SOURCE_START
        release = shared[:, start:].clamp(min=0.0)
        rates = torch.stack([release] + [release**power for power in self.release_decay_powers], dim=1)
        release_templates = torch.cat([templates[None, start:], self.fast_release_templates.float()])
        power = shared[:, :start] @ torch.exp(templates[:start])
        return power + _envelope_power(rates, release_templates, self.timbre_release_decays, timbre)

    def _program_scaled_releases(self, shared: Tensor, heard: Tensor) -> Tensor:
        """``shared`` roll columns with each per-family release decay scaled by ``exp`` of its family's mean
        ``program_release_decays`` offset over the ``heard`` programs ``[N, 128]``: the same as that log offset
        on the family's template, so the fit can give each program its own mix of fast and slow decay (with
        ``release_decay_powers`` the faster templates read the scaled decay, so the k-th power's template gets
        k times the offset)."""
        scales = torch.exp(_family_mean_over_programs(heard, self.program_release_decays.float()))  # [N, fam, R]
        pieces, done = [], 0
        for clock, family in enumerate(release_template_rows("family")):  # out of place: the fit backpropagates
            pieces += [shared[:, done : family.start], shared[:, family] * scales[:, :, clock]]
            done = family.stop
        return torch.cat(pieces + [shared[:, done:]], dim=1)

    def _released_power(
        self, roll: Tensor, timbre: Tensor | None, spectra: Tensor, colours: Tensor, heard: Tensor | None = None
    ) -> Tensor:
        """``[N, F]`` roll rows -> ``[N, bins]`` power of the released notes: each (family, pitch) whose release
        columns both ring, ``t = max(t_family, t_pitch)`` frames after its end (read off ``exp(-t / 20)``), gets
        its held spectrum ``spectra[p] * colours[f]`` under the gain ``exp(G[f, t])`` while ``t`` < K (``G`` with
        the mean offset of the family's ``heard`` programs when the prior has ``program_release_gains``)."""
        clock = RELEASE_FRAMES.index(RELEASE_GAIN_CLOCK)
        first = release_feature(clock, pitch=0)
        by_pitch = roll[:, first : first + NUM_PITCHES].clamp(min=0.0)
        by_family = roll[:, first + NUM_PITCHES : first + NUM_PITCHES + NUM_FAMILIES].clamp(min=0.0)
        joint = torch.minimum(by_family[:, :, None], by_pitch[:, None, :])  # [N, families, P]: the older end
        # a silent column (never ended) reads as 1 382 frames ago: past K like any old end, so no gain
        frames = (-RELEASE_GAIN_CLOCK * torch.log(joint.clamp(min=1e-30))).round()
        index = frames.clamp(max=self.release_gain_frames).long()  # K: ended too long ago (or never)
        gains = self.release_gains.float()
        gains = torch.cat([gains, gains.new_full((NUM_FAMILIES, 1), NO_RELEASE_LOG_POWER)], dim=1)
        if self.timbre_release_gains is None:
            table = gains.expand(len(roll), -1, -1)
        else:
            rows = torch.zeros(len(roll), dtype=torch.long, device=roll.device) if timbre is None else timbre
            offsets = torch.nn.functional.pad(self.timbre_release_gains.float(), (0, 1))
            table = gains[None] + offsets[rows]
        if self.program_release_gains is not None:
            offsets = _family_mean_over_programs(heard, self.program_release_gains.float())
            table = table + torch.nn.functional.pad(offsets, (0, 1))
        weights = torch.exp(torch.gather(table, 2, index))  # [N, families, P]
        return (torch.einsum("nfp,pb->nfb", weights, spectra) * colours).sum(dim=1)

    def _program_colour(self, programs: Tensor) -> Tensor:
        """``[N, 128]`` sounding-program columns -> ``[N, families, bins]`` log-power colour of each family:
        the mean colour of its programs that sound in the frame (0 where none does)."""
        return _family_mean_over_programs(programs, self.program_colours.float())

    def _timbre_program_colour(self, programs: Tensor, timbre: Tensor | None) -> Tensor:
        """``[N, 128]`` sounding-program columns, ``[N]`` timbres (None: timbre 0) -> ``[N, kinds, families,
        bins]``: each row's timbre's own offsets on the program colours, per tonal kind, the mean over the
        family's programs sounding in the frame (0 where none does)."""
        offsets = self.timbre_program_colours.float()  # [timbres, kinds, programs, bins]
        timbres, kinds, _, bins = offsets.shape
        per_program = offsets.permute(0, 2, 1, 3).reshape(timbres, NUM_PROGRAMS, kinds * bins)
        rows = torch.zeros(len(programs), dtype=torch.long, device=programs.device) if timbre is None else timbre
        colour = programs.new_zeros(len(programs), NUM_FAMILIES, kinds * bins)
        for index in rows.unique().tolist():  # one timbre at a time: a row-wise gather would copy the table N times
            chosen = rows == index
            colour = colour.index_put((chosen.nonzero().flatten(),),
                                      _family_mean_over_programs(programs[chosen], per_program[index]))  # fmt: skip
        return colour.reshape(len(programs), NUM_FAMILIES, kinds, bins).transpose(1, 2)

    @property
    def reads_timbre(self) -> bool:
        """Whether a parameter depends on the rows' timbre (the per-timbre offsets)."""
        tables = (self.timbre_drum_decays, self.timbre_release_decays, self.timbre_release_gains,
                  self.timbre_program_colours)  # fmt: skip
        return any(table is not None for table in tables)

    def forward(self, roll: Tensor, timbre: Tensor | None = None, heard: Tensor | None = None) -> Tensor:
        """``[..., F]`` roll -> ``[..., bins]`` log-mel estimate in the decoder's scaled units (float32).
        ``timbre``: timbre indices broadcastable from the left to ``roll``'s leading shape (``[B]`` for
        ``[B, T, F]``, ``[N]`` for rows, ``[1]``); None: timbre 0. ``heard``: ``[..., 128]`` programs heard
        (:func:`programs_heard`) for ``program_release_gains``; None: computed along the frame axis of a
        ``[..., T, F]`` roll, or each row's own program columns for ``[N, F]`` rows."""
        if roll.shape[-1] != self.roll_features:
            raise ValueError(f"roll has {roll.shape[-1]} features, the additive prior expects {self.roll_features}")
        lead = roll.shape[:-1]
        flat = roll.reshape(-1, roll.shape[-1]).float()
        if self.reads_heard and heard is None and roll.dim() > 2:
            heard = programs_heard(roll)
        if heard is not None:
            heard = heard.reshape(-1, NUM_PROGRAMS).float()
        rows = None
        if timbre is not None and self.reads_timbre:
            timbre = timbre.to(device=roll.device, dtype=torch.long)
            rows = timbre.reshape(*timbre.shape, *([1] * (len(lead) - timbre.dim()))).expand(lead).reshape(-1)
        with torch.autocast(flat.device.type, enabled=False):  # the power sum stays float32 under bf16 autocast
            log_mel = 0.5 * self.log_power(flat, rows, heard)
            if self.context_level is not None:
                context = flat[:, EXTENDED_ROLL_FEATURES:CONTEXT_ROLL_FEATURES]
                log_mel = log_mel + context @ self.context_level.weight.float().T + self.context_level.bias.float()
        return scale_features(log_mel, clip=True).reshape(*lead, -1)


def _family_mean_over_programs(programs: Tensor, values: Tensor) -> Tensor:
    """``[N, 128]`` program flags and ``[128, X]`` values per program -> ``[N, families, X]``: for each family the
    mean of its flagged programs' values (0 where none is flagged)."""
    per_family = programs.reshape(len(programs), NUM_FAMILIES, NUM_PROGRAMS // NUM_FAMILIES)
    share = per_family / per_family.sum(dim=2, keepdim=True).clamp(min=1.0)
    return torch.einsum("nfq,fqx->nfx", share, values.reshape(NUM_FAMILIES, NUM_PROGRAMS // NUM_FAMILIES, -1))


def programs_heard(roll: Tensor) -> Tensor:
    """``[..., T, F]`` program-layout roll -> ``[..., T, 128]``: 1 for each GM program that has sounded in the
    segment at or before the frame (the roll's program columns say only what sounds now, so a note's program is
    gone from them once the note ends, when its release needs it)."""
    sounding = (roll[..., VELOCITY_ROLL_FEATURES:PROGRAM_ROLL_FEATURES] > 0).to(roll.dtype)
    return torch.cummax(sounding, dim=-2).values


def _envelope_power(rates: Tensor, templates: Tensor, offsets: Tensor | None, timbre: Tensor | None) -> Tensor:
    """``[N, envelopes, C]`` envelope values on ``[envelopes, C, bins]`` log-power templates -> ``[N, bins]``
    power, each row with its timbre's ``[timbres, envelopes, C, bins]`` log offsets when ``offsets`` is given
    (``timbre``: ``[N]`` indices; None: timbre 0)."""
    if offsets is None:
        return torch.einsum("nkp,kpb->nb", rates, torch.exp(templates))
    if timbre is None:
        timbre = torch.zeros(len(rates), dtype=torch.long, device=rates.device)
    offsets = offsets.float()
    power = rates.new_zeros(len(rates), templates.shape[-1])
    for index in range(len(offsets)):  # each timbre's rows, masked (two or three timbres: cheap)
        rows = (timbre == index).to(power.dtype)[:, None]
        power = power + rows * torch.einsum("nkp,kpb->nb", rates, torch.exp(templates + offsets[index]))
    return power
