"""specdiff.constants: one source for the shared numbers and names."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from specdiff import constants

ROOT = Path(__file__).resolve().parents[1]


def test_constants_import_nothing_but_the_future():
    """Light enough for any module (and the CLI parser) to import."""
    tree = ast.parse((ROOT / "specdiff" / "constants.py").read_text(encoding="utf-8"))
    imports = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert all(isinstance(n, ast.ImportFrom) and n.module == "__future__" for n in imports)


def test_the_numbers_agree_with_each_other():
    assert constants.FRAMES_PER_SECOND * constants.HOP_LENGTH == constants.SAMPLE_RATE  # 50 frames of 320 samples
    assert constants.SEGMENT_SECONDS == pytest.approx(5.12)
    assert constants.SEGMENT_FRAMES * constants.HOP_LENGTH == 81_920  # samples per segment (ORIGINAL.md §1.2)


def test_no_module_defines_a_constant_of_its_own():
    """Each shared number or name is assigned once, in specdiff.constants; the others import it."""
    shared = {n for n in vars(constants) if n.isupper()}
    offenders = []
    for path in sorted((ROOT / "specdiff").rglob("*.py")):
        if path.name == "constants.py" and path.parent.name == "specdiff":
            continue
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
            names = {t.id for t in targets if isinstance(t, ast.Name)}
            offenders += [f"{path.relative_to(ROOT)}: {n}" for n in sorted(names & shared)]
    assert offenders == []


def test_name_lists_match_what_is_registered():
    from specdiff.audio import inverters
    from specdiff.evaluation import embeddings
    from specdiff.models import presets as model
    from specdiff.training import config as train_config

    assert set(constants.PRESET_NAMES) == set(model.PRESETS)
    assert set(constants.TRAIN_PRESET_NAMES) == set(train_config.TRAIN_PRESETS)
    assert set(constants.INVERTERS) == {"auto", *inverters.available_inverters()}
    assert set(constants.EMBEDDINGS) <= set(embeddings.available_embeddings())
