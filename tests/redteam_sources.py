"""Hostile train.py files against the sandbox, one per trick (containment half of the
integrity issue), and a before/after table.

Each is the tiny fixture train.py (tests/arena_tiny_train.py) plus one trick:
- `lookup_in_checkpoint`: training reads the default corpus package, rebuilds the val
  and test splits with the public split function, and hands over a model whose
  checkpoint carries a lookup table of them (what comes next after each 16 tokens);
- `lookup_in_worker`: the same table, built by `build_model` inside the evaluator's
  model worker (nothing in the checkpoint);
- `scratch_hog`: keeps 600 MB in /tmp and 600 MB in /dev/shm while it trains;
- `stdout_flood`: prints 200 MB before training;
- `fork_heavy`: honest code that touches a 400 MB array and forks 4 workers that
  share it (copy-on-write), as a data loader does;
- `fixed_seed`: pins torch's seed and the loader's; `hidden_seed`: the same through
  `getattr`, which no static check sees.
Each falls back to honest training when its trick is refused, so a refused trick shows
as an ordinary score.

As a script it runs them all on one LocalArena with whatever `arena` is importable and
prints a markdown table: `cd /work/main && python /path/to/tests/redteam_sources.py`
gives today's main (BEFORE), the same from this worktree gives AFTER.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from arena_helpers import TINY_TRAIN

SCRATCH_MB = 600
FLOOD_MB = 200
SHARED_MB = 400
WORKERS = 4

LOOKUP = textwrap.dedent('''
    import importlib.util as _ilu
    import json as _json
    import numpy as _np

    K = 16  # context tokens of the lookup, hashed (int64 arithmetic wraps the same way
    # in numpy and torch)
    POWERS = [(p - 2**64 if p >= 2**63 else p) for p in (pow(257, K - 1 - j, 2**64) for j in range(K))]

    def sealed_tokens():
        """val and test rebuilt from the corpus package, as prepare.py makes them."""
        spec = _ilu.find_spec("bible")
        path = list(spec.submodule_search_locations)[0] + "/data/kjv.jsonl"
        books = {}
        with open(path, encoding="utf-8") as f:
            for line in f:
                verse = _json.loads(line)
                books.setdefault(verse["book"], []).append(verse["text"])
        docs = [f"{b}\\n" + "\\n".join(v) + "\\n" for b, v in books.items()]
        splits = prepare.split_documents(docs)
        tok = prepare.Tokenizer("byte")
        return [prepare._encode_documents(tok, splits[s])[: prepare.MAX_EVAL_TOKENS]
                for s in ("val", "test")]

    def lookup_table():
        keys, nexts = [], []
        for toks in sealed_tokens():
            t = _np.asarray(toks, dtype=_np.int64)
            win = _np.lib.stride_tricks.sliding_window_view(t[:-1], K)
            keys.append((win * _np.asarray(POWERS, dtype=_np.int64)).sum(1))
            nexts.append(t[K:])
        keys, first = _np.unique(_np.concatenate(keys), return_index=True)
        return torch.from_numpy(keys), torch.from_numpy(_np.concatenate(nexts)[first])

    class Lookup(nn.Module):
        """The tiny model, overruled wherever the last K bytes are in the table."""

        def __init__(self, vocab_size, dim, n=0, persistent=True):
            super().__init__()
            self.tiny = TinyModel(vocab_size, dim)
            self.register_buffer("keys", torch.zeros(n, dtype=torch.int64), persistent)
            self.register_buffer("nexts", torch.zeros(n, dtype=torch.int64), persistent)

        def forward(self, idx):
            logits = self.tiny(idx)
            if len(self.keys) == 0:
                return logits
            win = F.pad(idx, (K - 1, 0)).unfold(1, K, 1)
            key = (win * torch.tensor(POWERS, dtype=torch.int64)).sum(-1)
            pos = torch.searchsorted(self.keys, key).clamp(max=len(self.keys) - 1)
            hit = self.keys[pos] == key
            boost = F.one_hot(self.nexts[pos], logits.size(-1)) * 30.0
            return torch.where(hit.unsqueeze(-1), boost, logits)
''')


def lookup_train(where: str) -> str:
    """`where`: "checkpoint" (the table is built in training and saved with the
    weights) or "worker" (built by build_model in the evaluator's worker)."""
    src = TINY_TRAIN.replace(
        "def build_model(**kw):\n    return TinyModel(**kw)\n",
        LOOKUP
        + textwrap.dedent("""
            def build_model(**kw):
                if kw.pop("lookup", "") != "worker":
                    return Lookup(**kw)
                try:
                    keys, nexts = lookup_table()
                    print("TRICK worked in the worker:", len(keys), "entries", flush=True)
                except OSError as exc:
                    print("TRICK refused in the worker:", exc, flush=True)
                    return Lookup(kw["vocab_size"], kw["dim"], 0, persistent=False)
                model = Lookup(kw["vocab_size"], kw["dim"], len(keys), persistent=False)
                model.keys.copy_(keys)
                model.nexts.copy_(nexts)
                return model
        """),
    )
    src = src.replace(
        "build_kwargs = dict(vocab_size=meta.vocab_size, dim=DIM)",
        f"build_kwargs = dict(vocab_size=meta.vocab_size, dim=DIM, n=0, lookup={where!r})",
    )
    if where == "checkpoint":
        src = src.replace(
            "    prepare.save_for_eval(model, build_kwargs, stats)",
            textwrap.indent(
                textwrap.dedent("""
                    tiny = model
                    try:
                        keys, nexts = lookup_table()
                        print("TRICK worked in training:", len(keys), "entries", flush=True)
                    except OSError as exc:
                        print("TRICK refused in training:", exc, flush=True)
                        keys = nexts = torch.zeros(0, dtype=torch.int64)
                    model = Lookup(meta.vocab_size, DIM, len(keys))
                    model.tiny.load_state_dict(tiny.state_dict())
                    model.keys.copy_(keys)
                    model.nexts.copy_(nexts)
                    build_kwargs["n"] = len(keys)
                    prepare.save_for_eval(model, build_kwargs, stats)
                """).strip(),
                "    ",
            ),
        )
        src = src.replace(
            "model = build_model(**build_kwargs)", "model = TinyModel(meta.vocab_size, DIM)"
        )
    else:
        src = src.replace(
            "model = build_model(**build_kwargs)", "model = Lookup(meta.vocab_size, DIM).tiny"
        )
        src = src.replace(
            "    prepare.save_for_eval(model, build_kwargs, stats)",
            "    wrapper = Lookup(meta.vocab_size, DIM, 0, persistent=False)\n"
            "    wrapper.tiny.load_state_dict(model.state_dict())\n"
            "    prepare.save_for_eval(wrapper, build_kwargs, stats)",
        )
    return src


def in_main(code: str) -> str:
    """TINY_TRAIN with `code` run at the start of main()."""
    body = textwrap.indent(textwrap.dedent(code).strip() + "\n", "    ")
    return TINY_TRAIN.replace("def main():\n", "def main():\n" + body, 1)


def hostile_sources() -> dict[str, str]:
    return {
        "lookup_in_checkpoint": lookup_train("checkpoint"),
        "lookup_in_worker": lookup_train("worker"),
        "scratch_hog": in_main(f"""
            import os
            block = b"\\1" * (1 << 20)
            for where in ("/tmp/hog", "/dev/shm/hog"):
                kept = 0
                try:
                    with open(where, "wb") as f:
                        for _ in range({SCRATCH_MB}):
                            f.write(block)
                            kept += 1
                except OSError as exc:
                    print("HOG refused at", kept, "MB:", exc, flush=True)
                print("HOG kept", kept, "MB in", where, flush=True)
        """),
        "stdout_flood": in_main(f"""
            import sys
            line = b"x" * 1023 + b"\\n"
            for _ in range({FLOOD_MB} * 1024):
                sys.stdout.buffer.write(line)
            sys.stdout.flush()
        """),
        "fork_heavy": in_main(f"""
            import os, time
            import numpy as np
            shared = np.ones({SHARED_MB} * 2**20 // 8)  # touched: resident
            kids = []
            for _ in range({WORKERS}):
                pid = os.fork()
                if pid == 0:  # a worker that only reads the shared array
                    time.sleep(3)
                    os._exit(0 if shared[::4096].sum() > 0 else 1)
                kids.append(pid)
            for pid in kids:
                os.waitpid(pid, 0)
            del shared
        """),
        "fixed_seed": TINY_TRAIN.replace(
            "    rt = prepare.runtime()\n",
            "    rt = prepare.runtime()\n    torch.manual_seed(1234)\n",
        ).replace("seed=rt.seed", "seed=0"),
        "hidden_seed": TINY_TRAIN.replace(
            "    rt = prepare.runtime()\n",
            '    rt = prepare.runtime()\n    getattr(torch, "manual_" + "seed")(1234)\n',
        ).replace("seed=rt.seed", '**{"se" + "ed": 0}'),
    }


SEEDS = {"fixed_seed": (0, 1), "hidden_seed": (0, 1)}
MEM_LIMIT_MB = 4096
BUDGET_S = 10.0  # the fixture stops at 30 steps first, so every run does the same work


def run_all(tmp: Path) -> dict[tuple[str, int], object]:
    """Every hostile train.py (and the honest root on two seeds) through a LocalArena
    on the default corpus. Returns RunResults by (name, seed)."""
    from arena_helpers import PROGRAM

    import prepare
    from arena.devices import detect_slots
    from arena.local import LocalArena
    from arena.records import RunRequest
    from arena.repo import ExperimentRepo

    data = tmp / "data"
    if prepare.main(["--data-dir", str(data)]) != 0:
        raise RuntimeError("prepare failed")
    # the harness that is importable (main's for the "before" table) is the run's
    repo = ExperimentRepo.create(
        tmp / "run", TINY_TRAIN, Path(prepare.__file__).read_text(), PROGRAM
    )
    commits = {"root": repo.root_commit}
    for name, src in hostile_sources().items():
        commits[name] = repo.commit_candidate(repo.root_commit, src, name)
    results = {}
    with LocalArena(
        repo, data, detect_slots("cpu:2"), mem_limit_mb=MEM_LIMIT_MB, eval_timeout_s=600
    ) as arena:
        for name, sha in commits.items():
            for seed in SEEDS.get(name, (0, 1) if name == "root" else (0,)):
                arena.submit(RunRequest(name, sha, seed, BUDGET_S))
        want = sum(len(SEEDS.get(n, (0, 1) if n == "root" else (0,))) for n in commits)
        while len(results) < want:
            for r in arena.poll(5.0):
                results[(r.candidate_id, r.seed)] = r
    return results


def table(results) -> str:
    rows = ["| run | seed | status | val_bpb | peak_mem_mb | log MB | message |", "|---" * 7 + "|"]
    for (name, seed), r in sorted(results.items()):
        log = Path(r.log_path) if r.log_path else None
        size = log.stat().st_size / 2**20 if log and log.exists() else 0.0
        val = f"{r.val_bpb:.4f}" if r.val_bpb is not None else "-"
        mem = f"{r.peak_mem_mb:.0f}" if r.peak_mem_mb is not None else "-"
        msg = (r.message or "").strip().splitlines()
        rows.append(
            f"| {name} | {seed} | {r.status.value} | {val} | {mem} | {size:.1f} | "
            f"{(msg[-1] if msg else '')[:90]} |"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    import logging
    import tempfile

    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="redteam-") as tmp:
        print(table(run_all(Path(tmp))))
