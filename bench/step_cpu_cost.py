"""CPU and wall time per training step of the seed train.py, in this process.

    OMP_WAIT_POLICY=PASSIVE python bench/step_cpu_cost.py 20     # 20 steps after 3 warm-up
    OMP_WAIT_POLICY=ACTIVE  python bench/step_cpu_cost.py 20     # spinning waits

The probe behind the CPU budget's thread settings: at a fixed step count the CPU time
per step should not depend on machine load. Run it once as is and once beside busy
processes (`python -c 'while True: pass' &` twice) with each setting; the wait policy
must be set in the environment (OpenMP reads it when torch loads it). Prints CPU ms per
step (user and system), wall ms per step and the CPU per thread per wall ratio.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# isort: off
import prepare  # noqa: E402  (before torch, as in train.py: it sets OpenMP's wait policy)
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
# isort: on


def main() -> int:
    steps = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    spec = importlib.util.spec_from_file_location("seed_train", ROOT / "train_template.py")
    tt = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tt)
    rt = prepare.runtime()
    meta = prepare.load_meta()
    model = tt.build_model(
        vocab_size=meta.vocab_size, depth=tt.DEPTH, dim=tt.MODEL_DIM, n_heads=tt.N_HEADS,
        mlp_ratio=tt.MLP_RATIO, max_seq_len=prepare.SEQ_LEN, rope_base=tt.ROPE_BASE,
        softcap=tt.LOGIT_SOFTCAP,
    )
    opts = tt.build_optimizers(model)
    loader = prepare.TrainLoader(tt.BATCH_SIZE, tt.SEQ_LEN, device="cpu", seed=rt.seed)

    def step() -> torch.Tensor:
        x, y = next(loader)
        logits = model(x)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), y.reshape(-1))
        loss.backward()
        for opt in opts:
            opt.step()
        model.zero_grad(set_to_none=True)
        return loss

    for _ in range(prepare.WARMUP_STEPS):
        step()
    t0, w0 = os.times(), time.perf_counter()
    for _ in range(steps):
        loss = step()
    t1, w1 = os.times(), time.perf_counter()
    user, system = (t1.user - t0.user) / steps, (t1.system - t0.system) / steps
    wall = (w1 - w0) / steps
    print(f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '')} threads {rt.threads}: "
          f"cpu/step {1000 * (user + system):.0f} ms (user {1000 * user:.0f}, system "
          f"{1000 * system:.0f}), wall/step {1000 * wall:.0f} ms, cpu/threads/wall "
          f"{(user + system) / rt.threads / wall:.2f}, loss {loss.item():.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
