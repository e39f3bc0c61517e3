"""``/api/info`` and ``/api/health``: what this server runs and accepts, and its queue counters."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from specdiff import __version__
from specdiff.constants import FRAMES_PER_SECOND
from specdiff.server.schemas import HealthOut, InfoOut
from specdiff.server.state import State

router = APIRouter(tags=["service"])


@router.get("/api/info", response_model=InfoOut)
def info(state: State) -> dict[str, Any]:
    """What this server runs and accepts."""
    config, synthesizer = state.config, state.synthesizer
    return {
        "version": __version__,
        "model": state.model_name,
        "device": state.device,
        "sample_rate": synthesizer.sample_rate,
        "segment_seconds": synthesizer.segment_frames / FRAMES_PER_SECOND,
        "inverter": type(synthesizer.pipe.inverter).__name__,
        "schedulers": state.schedulers,
        "defaults": {"steps": config.default_steps, "guidance": config.default_guidance,
                     "scheduler": config.default_scheduler},
        "limits": {"max_upload_bytes": config.max_upload_bytes, "max_midi_seconds": config.max_midi_seconds,
                   "max_notes": config.max_notes, "max_events": config.max_events,
                   "max_parse_seconds": config.max_parse_seconds, "max_queued": config.max_queued,
                   "max_steps": config.max_steps,
                   "max_guidance": config.max_guidance, "result_ttl_s": config.result_ttl,
                   "fetched_ttl_s": config.fetched_ttl, "max_kept_results": config.max_kept_results,
                   "max_kept_bytes": config.max_kept_bytes},
        "examples": [{"name": name} for name in state.examples],
    }  # fmt: skip


@router.get("/api/health", response_model=HealthOut)
def health(state: State) -> dict[str, Any]:
    """Queue counters since start."""
    return {"status": "ok", **state.queue.stats()}
