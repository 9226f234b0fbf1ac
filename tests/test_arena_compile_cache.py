"""torch.compile's caches: one directory per commit, shared by its seeds, writable in the
sandbox, kept after each run (so a resume starts warm); a child starts from a copy of its
parent's, and never writes into it."""

import subprocess

from arena_helpers import build_cache, make_repo

from arena.devices import detect_slots
from arena.local import LocalArena
from arena.records import RunOutcome, RunRequest, Status

# A candidate that reports what it sees of the cache and leaves a mark in it; it exits
# without a checkpoint (a contract error) since only the environment matters here.
PROBE = """import os, pathlib
inductor = pathlib.Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])
seen = sorted(p.name for p in inductor.glob("mark-*")) if inductor.is_dir() else []
inductor.mkdir(parents=True, exist_ok=True)
(inductor / f"mark-{os.environ['EVOLVE_SEED']}").write_text("x")
print("seen:", seen, os.environ["TORCHINDUCTOR_FX_GRAPH_CACHE"], os.environ["TRITON_CACHE_DIR"])
"""


def test_seeds_of_a_commit_share_a_writable_compile_cache_seeded_from_the_parent(tmp_path):
    data_dir = build_cache(tmp_path / "data")
    repo = make_repo(tmp_path / "run")
    probe = repo.commit_candidate(repo.root_commit, PROBE, "probe")
    base = repo.run_dir / "cache" / "compile"
    (base / repo.root_commit / "inductor").mkdir(parents=True)
    (base / repo.root_commit / "inductor" / "mark-root").write_text("x")
    cache = base / probe
    with LocalArena(repo, data_dir, detect_slots("cpu:1"), mem_limit_mb=2048) as arena:
        for seed in (1, 2):  # one after the other: the second sees the first's mark
            arena.submit(RunRequest("probe", probe, seed, 5.0))
            got = []
            while not got:
                got = arena.poll(1.0)
            [r] = got
            assert r.outcome is RunOutcome.FINISHED and r.status is Status.CONTRACT_ERROR
    logs = sorted((repo.run_dir / "logs").glob("probe-s*.log"))
    texts = {p.name.split("-")[1]: p.read_text() for p in logs if not p.name.endswith(".eval.log")}
    assert f"seen: ['mark-root'] 1 {cache / 'triton'}" in texts["s1"]
    assert "seen: ['mark-1', 'mark-root'] 1" in texts["s2"]
    assert sorted(p.name for p in (cache / "inductor").iterdir()) == ["mark-1", "mark-2", "mark-root"]
    # the parent's cache is untouched by the child's runs
    assert sorted(p.name for p in (base / repo.root_commit / "inductor").iterdir()) == ["mark-root"]
    status = subprocess.run(
        ["git", "-C", str(repo.run_dir), "status", "--porcelain"],
        check=True, capture_output=True, text=True,
    )
    assert "cache" not in status.stdout  # ignored by the run's git
