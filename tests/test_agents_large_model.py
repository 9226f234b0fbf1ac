"""The larger embedded model (Qwen2.5-Coder-1.5B, extra local-llm-large): chosen with one
program.md key or flag, assembled from its PyPI parts and verified like the 0.5B."""

from __future__ import annotations

import pytest

from agents.local_model import EMBEDDED_MODELS, LOCAL_MODEL_CHOICES, assemble, parts_installed
from population.program import ProgramError, parse_program


def test_local_model_key_picks_the_large_model_and_bad_values_are_one_line_errors():
    cfg = parse_program('+++\nlocal_model = "large"\n+++\nprose\n')
    assert LOCAL_MODEL_CHOICES[cfg.local_model] == "qwen2.5-coder-1.5b"
    assert parse_program("+++\n+++\n").local_model == "small"
    assert cfg.with_overrides(local_model="small").local_model == "small"  # the --local-model flag wins
    with pytest.raises(ProgramError, match='local_model must be "small" or "large"'):
        parse_program('+++\nlocal_model = "huge"\n+++\n')


@pytest.mark.slow
@pytest.mark.embedded_llm
@pytest.mark.skipif(not parts_installed("qwen2.5-coder-1.5b"), reason="pip install -e '.[local-llm-large]'")
def test_the_large_model_assembles_from_its_parts_and_matches_its_hash(tmp_path):
    path = assemble("qwen2.5-coder-1.5b", tmp_path)
    spec = EMBEDDED_MODELS["qwen2.5-coder-1.5b"]
    assert path.stat().st_size == spec.size
    assert (tmp_path / "qwen2.5-coder-1.5b.gguf.sha256").read_text().startswith(spec.sha256)
