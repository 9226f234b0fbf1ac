"""The sandbox on its own: one adversarial property per test (needs bubblewrap)."""

import subprocess
import sys

import pytest

from arena.sandbox import Sandbox, python_roots
from arena_helpers import HAS_BWRAP, build_cache

needs_bwrap = pytest.mark.skipif(not HAS_BWRAP, reason="bubblewrap (bwrap) is not installed")


def run_in(sandbox, code, tmp_path, **kw):
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    argv = sandbox.command([sys.executable, "-c", code], cwd=work, writable=[work], **kw)
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=60, preexec_fn=sandbox.limits()
    )


@needs_bwrap
def test_no_network(tmp_path):
    code = (
        "import socket\ntry:\n    socket.create_connection(('127.0.0.1', 22), timeout=2)\n"
        "except OSError as e:\n    print('refused', e.errno)\n"
    )
    out = run_in(Sandbox(2048), code, tmp_path)
    assert out.stdout.startswith("refused"), out.stderr


@needs_bwrap
def test_eval_split_is_hidden_and_train_is_read_only(tmp_path):
    data = build_cache(tmp_path / "data")
    code = (
        f"import os\nprint(sorted(os.listdir({str(data / 'eval')!r})))\n"
        f"print(os.path.getsize({str(data / 'train' / 'tokens.bin')!r}) > 0)\n"
        f"try:\n    open({str(data / 'manifest.json')!r}, 'a')\nexcept OSError as e:\n    print(e.strerror)\n"
    )
    out = run_in(Sandbox(2048), code, tmp_path, data_dir=data)
    assert out.stdout.splitlines() == ["[]", "True", "Read-only file system"], out.stderr


@needs_bwrap
def test_home_and_other_directories_are_invisible(tmp_path):
    secret = tmp_path / "other" / "store.sqlite"
    secret.parent.mkdir()
    secret.write_text("secret")
    code = (
        f"import os\nprint(os.path.exists({str(secret)!r}), os.path.exists('/work'), "
        "sum(e.isdigit() for e in os.listdir('/proc')) < 5)\n"
        "print(*(sorted(os.listdir('/root')) if os.path.exists('/root') else []))\n"
    )
    out = run_in(Sandbox(2048), code, tmp_path)
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["False", "False", "True"], out.stderr
    # of the home directory, only the path to the Python installation (if it lives there)
    allowed = {p.relative_to("/root").parts[0] for p in python_roots() if p.is_relative_to("/root")}
    assert set(lines[1].split()) <= allowed


def test_memory_ceiling_applies_without_bubblewrap_too(tmp_path):
    code = "b = bytearray(3 << 30)\n"
    out = run_in(Sandbox(1024, use_bwrap=False), code, tmp_path)
    assert out.returncode != 0 and "MemoryError" in out.stderr


def test_without_bubblewrap_the_gaps_are_named():
    missing = Sandbox(1024, use_bwrap=False).describe()
    assert any("network" in m for m in missing)
    assert any("evaluation splits" in m for m in missing)
    if HAS_BWRAP:
        assert Sandbox(1024).describe() == []
