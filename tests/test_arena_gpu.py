"""The arena on a CUDA slot (skipped without a GPU): pinned device, NVML peak memory."""

import pytest
from arena_helpers import TINY_TRAIN, build_cache, make_repo, survivors

from arena.devices import cuda_devices, detect_slots
from arena.local import LocalArena
from arena.records import RunRequest, Status

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not cuda_devices(), reason="needs a CUDA device")]


def test_candidates_run_pinned_to_their_gpu_and_are_measured_there(tmp_path):
    data_dir = build_cache(tmp_path / "data")
    repo = make_repo(tmp_path / "run")
    index, name = cuda_devices()[0]
    leak = repo.commit_candidate(
        repo.root_commit,
        TINY_TRAIN.replace(
            "h = torch.relu(self.hidden(h) + self.prev(shifted))",
            "h = torch.relu(self.hidden(h) + self.prev(shifted) + h.mean(dim=1, keepdim=True))",
        ),
        "leak",
    )
    with LocalArena(repo, data_dir, detect_slots(str(index)), mem_limit_mb=16384) as arena:
        arena.submit(RunRequest("root", repo.root_commit, 0, 2.0))
        arena.submit(RunRequest("leak", leak, 0, 2.0))
        got = {}
        while len(got) < 2:
            got.update({r.candidate_id: r for r in arena.poll(300)})
    r = got["root"]
    assert r.status is Status.EVALUATED, r.message
    assert r.device_type == "cuda" and r.device_name == name
    assert r.peak_mem_mb is not None and r.peak_mem_mb > 0
    assert 0 < r.val_bpb < 8
    assert r.claimed["device"] == "cuda"  # what it says; the slot pinned it to one GPU
    assert got["leak"].status is Status.CAUSALITY_VIOLATION
    assert survivors(repo.run_dir) == []
