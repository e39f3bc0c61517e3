"""The networks record their constructor arguments (specdiff.models.config.register_to_config).

``config`` is what ``config.json`` holds: captured from ``__init__`` (no hand-written dicts),
read-only, rebuilt by ``from_config``, and written by a model folder byte for byte as before
(the bundled model's files, in the diffusers layout, come back unchanged).
"""

from __future__ import annotations

import copy
import json
import pickle

import pytest

torch = pytest.importorskip("torch")

from specdiff.models.config import ConfigMixin, FrozenConfig, register_to_config  # noqa: E402
from specdiff.models.decoder import DECODER_EXTENSIONS, FilmDecoder  # noqa: E402
from specdiff.models.encoders import ContinuousEncoder, NotesEncoder  # noqa: E402
from specdiff.pipeline.folder import CONFIG_NAME, NETWORKS  # noqa: E402

SMALL = dict(d_model=16, num_layers=1, num_heads=2, d_kv=8, d_ff=32, dropout_rate=0.0)


def test_every_constructor_argument_is_captured_defaults_included():
    notes = NotesEncoder(vocab_size=100, max_length=64, **SMALL)
    assert notes.config == {
        "max_length": 64, "vocab_size": 100, **SMALL, "feed_forward_proj": "gated-gelu", "is_decoder": False,
    }  # fmt: skip
    context = ContinuousEncoder(8, 32, **SMALL)  # positional arguments too
    assert (context.config["input_dims"], context.config["targets_context_length"]) == (8, 32)
    decoder = FilmDecoder(input_dims=8, targets_length=32, **SMALL)
    assert set(decoder.config) == {"input_dims", "targets_length", "max_decoder_noise_time", *SMALL}
    assert decoder.config["max_decoder_noise_time"] == 20000.0  # the checkpoint's value, not diffusers' 2000


def test_decoder_extensions_appear_only_when_on_and_in_their_json_form():
    plain = FilmDecoder(input_dims=8, targets_length=32, **SMALL, **DECODER_EXTENSIONS)
    assert not set(DECODER_EXTENSIONS) & set(plain.config)  # an original config.json stays unchanged
    on = FilmDecoder(input_dims=8, targets_length=32, **SMALL, score_roll_features=6, timbres=("a", "b"),
                     prediction_type="edm", input_skip_frames=3)  # fmt: skip
    assert on.config["timbres"] == ["a", "b"] and on.timbres == ["a", "b"]  # a tuple is stored as JSON's list
    assert (on.config["score_roll_features"], on.config["input_skip_frames"]) == (6, 3)
    assert "score_prior" not in on.config and on.config["prediction_type"] == "edm"


def test_config_is_read_only_and_readable_as_attributes():
    config = NotesEncoder(vocab_size=100, max_length=64, **SMALL).config
    assert isinstance(config, dict) and config.d_model == 16 and json.loads(json.dumps(config)) == config
    for change in (
        lambda: config.__setitem__("d_model", 8),
        lambda: config.update(d_model=8),
        lambda: config.pop("d_model"),
        lambda: setattr(config, "d_model", 8),
    ):
        with pytest.raises(TypeError, match="read-only"):
            change()
    with pytest.raises(AttributeError):
        config.no_such_key  # noqa: B018
    # Copies (EMA, DataLoader workers) and pickles keep it whole and read-only.
    for clone in (copy.deepcopy(config), pickle.loads(pickle.dumps(config)), copy.copy(config)):
        assert type(clone) is FrozenConfig and clone == config


def test_from_config_rebuilds_the_same_network():
    decoder = FilmDecoder(input_dims=8, targets_length=32, **SMALL, score_roll_features=6)
    again = FilmDecoder.from_config({"_class_name": "T5FilmDecoder", **decoder.config})  # diffusers' keys skipped
    assert again.config == decoder.config
    assert {k: v.shape for k, v in again.state_dict().items()} == {k: v.shape for k, v in decoder.state_dict().items()}
    assert copy.deepcopy(decoder).config == decoder.config
    with pytest.raises(TypeError):
        FilmDecoder.from_config({**decoder.config, "no_such_argument": 1})


def test_the_helper_works_for_any_class_and_a_subclass_keeps_its_own_arguments():
    class Base(ConfigMixin):
        @register_to_config
        def __init__(self, width: int = 2, names: tuple[str, ...] = ("x",)) -> None:
            self.seen = dict(self.config)  # set before the body runs (initialisation may read it)

    class Child(Base):
        @register_to_config
        def __init__(self, depth: int = 3) -> None:
            super().__init__(width=depth * 2)

    assert Base().config == {"width": 2, "names": ["x"]} and Base(5).seen == {"width": 5, "names": ["x"]}
    assert Child(4).config == Child(4).seen == {"depth": 4}  # the class built, not its parent
    with pytest.raises(TypeError, match="named arguments"):

        class Loose(ConfigMixin):
            @register_to_config
            def __init__(self, **kwargs: int) -> None:
                pass


def test_folder_round_trip_writes_the_same_config_json(tmp_path):
    """Saving the bundled model writes its three config.json files byte for byte, and they load
    back into networks with the same config (strict loading: tests/test_old_artefacts.py)."""
    from specdiff.pipeline.default_model import default_model_path
    from specdiff.pipeline.pipeline import SpectrogramDiffusionPipeline

    bundled = default_model_path()
    if bundled is None:
        pytest.skip("no bundled model")
    pipe = SpectrogramDiffusionPipeline.from_pretrained(bundled, inverter=None)
    saved = pipe.save_pretrained(tmp_path / "again", dtype=torch.float16)
    for name in NETWORKS:
        assert (saved / name / CONFIG_NAME).read_bytes() == (bundled / name / CONFIG_NAME).read_bytes(), name
    loaded = SpectrogramDiffusionPipeline.from_pretrained(saved, inverter=None)
    for name in NETWORKS:
        assert getattr(loaded, name).config == getattr(pipe, name).config
