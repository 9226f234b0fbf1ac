"""Bad input before anything trains: every case is one line on stderr saying what to do,
exit code 1, found in seconds, and nothing created. Real `evolve` processes on a tiny
prepared corpus."""

from __future__ import annotations

import os
import resource
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import prepare

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("tiny")
    corpus = base / "corpus"
    corpus.mkdir()
    for i in range(12):
        (corpus / f"c{i:02d}.txt").write_text(f"Chapter {i}.\n" + "The quick brown fox jumps over the lazy dog.\n" * 40)
    data = base / "data"
    assert prepare.main(["--text", str(corpus), "--data-dir", str(data)]) == 0
    return data


def evolve(*args: str, env: dict | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "population.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def one_line_error(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 1, (r.stdout[-2000:], r.stderr[-2000:])
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("evolve: error: "), r.stderr
    return r.stderr


def no_keys() -> dict:
    return {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}


@pytest.mark.slow
def test_a_litellm_model_without_its_key_stops_before_the_root_trains(tiny_data, tmp_path):
    run = tmp_path / "run"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    r = evolve("--model", "openai/gpt-4o", "--data-dir", str(tiny_data), "--run-dir", str(run), "--unconfined",
               env=no_keys())
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    err = one_line_error(r)
    assert "OPENAI_API_KEY" in err and "set the environment variable" in err
    # CPU seconds (load does not change them): imports and checks, not three root trainings of 60 s
    assert (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime) < 40
    assert not run.exists()


@pytest.mark.slow
def test_a_model_server_that_does_not_answer_is_one_line(tiny_data, tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    program = tmp_path / "program.md"
    program.write_text(f'+++\nmodel = "openai/local"\napi_base = "http://127.0.0.1:{port}/v1"\n+++\nprose\n')
    err = one_line_error(evolve("--program", str(program), "--data-dir", str(tiny_data),
                                "--run-dir", str(tmp_path / "run"), "--unconfined"))
    assert f"nothing answers at http://127.0.0.1:{port}/v1" in err
    assert not (tmp_path / "run").exists()


@pytest.fixture()
def path_without_bwrap(tmp_path) -> str:
    """A PATH whose directories hold every program of the current PATH but bwrap."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for d in os.environ.get("PATH", "").split(os.pathsep):
        if not os.path.isdir(d):
            continue
        for name in os.listdir(d):
            src, dst = os.path.join(d, name), bin_dir / name
            if name != "bwrap" and not dst.exists() and os.access(src, os.X_OK) and os.path.isfile(src):
                dst.symlink_to(src)
    assert shutil.which("bwrap", path=str(bin_dir)) is None and shutil.which("git", path=str(bin_dir))
    return str(bin_dir)


@pytest.mark.slow
def test_without_bubblewrap_evolve_refuses_unless_the_user_consents(tiny_data, tmp_path, path_without_bwrap):
    env = dict(no_keys(), PATH=path_without_bwrap, EVOLVE_BWRAP="")  # no system nor bundled bwrap
    err = one_line_error(evolve("--model", "openai/gpt-4o", "--data-dir", str(tiny_data),
                                "--run-dir", str(tmp_path / "run"), env=env))
    assert "bubblewrap" in err and "--unconfined" in err and "apt-get install bubblewrap" in err
    # with consent the sandbox check passes: the next prerequisite (the key) is what stops it
    err = one_line_error(evolve("--model", "openai/gpt-4o", "--data-dir", str(tiny_data),
                                "--run-dir", str(tmp_path / "run"), "--unconfined", env=env))
    assert "OPENAI_API_KEY" in err and "bubblewrap" not in err
    assert not (tmp_path / "run").exists()


def test_tui_with_no_run_yet_is_one_line(tmp_path):
    err = one_line_error(evolve("tui", cwd=tmp_path))
    assert "no run under runs/" in err and "--run-dir" in err
    (tmp_path / "empty").mkdir()
    err = one_line_error(evolve("tui", "--run-dir", str(tmp_path / "empty")))
    assert "start one with `evolve`" in err


def test_export_before_anything_was_confirmed_is_one_line(tmp_path):
    run = tmp_path / "run"
    r = evolve("--simulate", "--generations", "0", "--run-dir", str(run), "--sim-run-seconds", "0", "-q")
    assert r.returncode == 0, r.stderr
    for fmt in ("patch", "series", "file"):
        err = one_line_error(evolve("export", "--best", "--format", fmt, "--run-dir", str(run)))
        assert "no candidate has been confirmed" in err and "--candidate" in err
    # the root itself can still be had on request
    root = evolve("export", "--candidate", "root", "--format", "file", "--run-dir", str(run))
    assert root.returncode == 0 and "DEPTH =" in root.stdout
