"""Device slots: CPU threads divided between slots, explicit GPU lists, CUDA on GPU hosts."""

import os

import pytest

from arena.devices import Slot, cuda_devices, detect_slots

has_cuda = bool(cuda_devices())


def test_cpu_slots_divide_the_threads():
    slots = detect_slots("cpu:2", threads=8)
    assert [s.name for s in slots] == ["cpu:0", "cpu:1"]
    assert all(s.device_type == "cpu" and s.threads == 4 and s.device_name for s in slots)
    env = slots[0].env()
    assert env["EVOLVE_DEVICE"] == "cpu" and env["EVOLVE_THREADS"] == "4"
    assert env["CUDA_VISIBLE_DEVICES"] == ""


def test_evolve_threads_sets_the_total(monkeypatch):
    monkeypatch.setenv("EVOLVE_THREADS", "6")
    assert [s.threads for s in detect_slots("cpu:3")] == [2, 2, 2]


def test_more_slots_than_threads_is_refused():
    with pytest.raises(ValueError, match="need at least 4 threads"):
        detect_slots("cpu:4", threads=2)


def test_bad_device_lists_are_refused():
    with pytest.raises(ValueError, match="is not a GPU index"):
        detect_slots("0,x")
    with pytest.raises(ValueError, match="give GPU indices"):
        detect_slots(" , ")
    if not has_cuda:
        with pytest.raises(ValueError, match="no CUDA device 0"):
            detect_slots("0")


@pytest.mark.skipif(has_cuda, reason="this machine has a GPU")
def test_without_a_gpu_the_default_is_one_single_thread_cpu_slot_per_core():
    total = int(os.environ.get("EVOLVE_THREADS", 0)) or os.cpu_count()
    slots = detect_slots()
    assert len(slots) == min(total, 8) and all(s.device_type == "cpu" for s in slots)
    assert sum(s.threads for s in slots) <= total and (total > 8 or all(s.threads == 1 for s in slots))
    assert len(detect_slots("cpu")) == len(slots) and len(detect_slots("cpu:1")) == 1


@pytest.mark.gpu
@pytest.mark.skipif(not has_cuda, reason="needs a CUDA device")
def test_cuda_slots_are_pinned_one_gpu_each():
    found = cuda_devices()
    slots = detect_slots(",".join(str(i) for i, _ in found))
    assert [s.cuda_index for s in slots] == [i for i, _ in found]
    s: Slot = slots[0]
    assert s.device_type == "cuda" and s.env()["CUDA_VISIBLE_DEVICES"] == str(found[0][0])
    assert s.env()["EVOLVE_DEVICE"] == "cuda" and s.device_name == found[0][1]
