"""Run the evaluator's red-team train.py files (tests/redteam_models.py) through a real
LocalArena and print one table row per file: status and val_bpb.

    python bench/redteam_eval.py                      # the code of this checkout
    python bench/redteam_eval.py --code /work/main    # another checkout's arena + prepare.py

`--code` puts that checkout first on sys.path and uses its prepare.py as the run's
harness, so the same hostile files can be scored before and after a change. Budget 1 s
per run, CPU, bubblewrap when installed; a few minutes on a 2-core machine.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--code", type=Path, default=HERE, help="checkout whose arena and prepare.py run")
    p.add_argument("--only", nargs="*", help="names of the red-team files to run")
    args = p.parse_args()
    code = args.code.resolve()
    sys.path.insert(0, str(code))
    spec = importlib.util.spec_from_file_location("redteam_models", HERE / "tests" / "redteam_models.py")
    models = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(models)

    import prepare
    from arena.devices import detect_slots
    from arena.local import LocalArena
    from arena.records import RunRequest
    from arena.repo import ExperimentRepo

    sources = {"honest_tiny_model": models.HONEST, **models.HOSTILE}
    if args.only:
        sources = {k: v for k, v in sources.items() if k in args.only}
    with tempfile.TemporaryDirectory(prefix="redteam-") as tmp:
        tmp = Path(tmp)
        prepare.build_cache(tmp / "data", models.corpus(), "text", "byte")
        repo = ExperimentRepo.create(
            tmp / "run", models.HONEST, (code / "prepare.py").read_text(), "# program\n"
        )
        commits = {n: repo.commit_candidate(repo.root_commit, s, n) for n, s in sources.items()}
        t0 = time.monotonic()
        results = {}
        with LocalArena(repo, tmp / "data", detect_slots("cpu:2"), mem_limit_mb=3000,
                        eval_timeout_s=600) as arena:
            for name, sha in commits.items():
                arena.submit(RunRequest(name, sha, 0, 1.0))
            while len(results) < len(commits):
                for r in arena.poll(1.0):
                    results[r.candidate_id] = r
        print(f"code: {code}  ({time.monotonic() - t0:.0f} s)")
        print(f"| {'train.py':30} | {'status':20} | val_bpb | message")
        for name in sources:
            r = results[name]
            bpb = f"{r.val_bpb:.3f}" if r.val_bpb is not None else "-"
            print(f"| {name:30} | {r.status.value:20} | {bpb:>7} | {r.message.splitlines()[0][:90]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
