"""Device slots: where candidates run, one at a time per slot.

Flow: the arena asks `detect_slots(devices=...)` once at start-up and hands each
running candidate one `Slot`. A CUDA slot is one GPU, pinned with
`CUDA_VISIBLE_DEVICES` (the candidate then sees it as `cuda`); without a GPU, the CPU
cores are divided between CPU slots (`EVOLVE_THREADS`). The slot's device type and
name are recorded with every evaluation, so results from different device types are
never compared.

What it does not do: schedule (the arena does), or share one GPU between candidates
(results from a shared device are not comparable).
"""

from __future__ import annotations

import logging
import os
import platform
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Slot:
    name: str  # "cuda:1" or "cpu:0"
    device_type: str  # "cuda" | "cpu"
    device_name: str  # "NVIDIA H100 80GB HBM3" or the CPU model
    cuda_index: int | None = None  # physical GPU index, for CUDA_VISIBLE_DEVICES
    threads: int = 1

    def env(self) -> dict[str, str]:
        """The contract's device variables for a candidate on this slot."""
        if self.device_type == "cuda":
            return {
                "EVOLVE_DEVICE": "cuda",
                # NVML numbers GPUs by PCI bus; make CUDA use the same numbering
                "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
                "CUDA_VISIBLE_DEVICES": str(self.cuda_index),
                "EVOLVE_THREADS": str(self.threads),
            }
        return {
            "EVOLVE_DEVICE": "cpu",
            "CUDA_VISIBLE_DEVICES": "",
            "EVOLVE_THREADS": str(self.threads),
        }


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def cuda_devices() -> list[tuple[int, str]]:
    """(index, name) of every visible CUDA device: NVML first (no CUDA context is
    created), then torch. Empty without a GPU."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            out = []
            for i in range(pynvml.nvmlDeviceGetCount()):
                name = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(i))
                out.append((i, name.decode() if isinstance(name, bytes) else str(name)))
        finally:
            pynvml.nvmlShutdown()
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        if visible is not None and visible.strip() != "":
            keep = {int(v) for v in visible.split(",") if v.strip().isdigit()}
            out = [d for d in out if d[0] in keep]
        elif visible is not None:
            out = []
        return out
    except ImportError:
        log.debug("pynvml not installed; asking torch for CUDA devices")
    except Exception as exc:  # NVML raises its own error types when no driver is present
        log.debug("NVML unavailable (%s); asking torch for CUDA devices", exc)
    try:
        import torch

        if not torch.cuda.is_available():
            return []
        return [(i, torch.cuda.get_device_name(i)) for i in range(torch.cuda.device_count())]
    except ImportError:
        return []


def parse_devices(spec: str) -> list[str]:
    """ "0,1,3" -> ["0", "1", "3"]; "cpu" -> ["cpu"]; "cpu:2" -> two CPU slots."""
    items = [s.strip() for s in spec.split(",") if s.strip()]
    if not items:
        raise ValueError(f"--devices {spec!r}: give GPU indices like 0,1,3, or cpu, or cpu:N")
    return items


MAX_DEFAULT_CPU_SLOTS = 8  # beyond this many cores, the default CPU slots share the threads out


def detect_slots(
    devices: str | None = None, cpu_slots: int | None = None, threads: int | None = None
) -> list[Slot]:
    """The device slots to run on.

    devices: None (every CUDA device, else CPU), "0,1,3" (those GPUs), "cpu" or
    "cpu:N" (N CPU slots). cpu_slots: the number of CPU slots when running on CPU
    (default: one per thread, at most `MAX_DEFAULT_CPU_SLOTS`). threads: total CPU
    threads to divide (default EVOLVE_THREADS or all cores).

    One thread per CPU slot is the default because the CPU budget (CPU seconds per
    thread) is load-immune only then: with 2 threads per run, two busy processes beside
    it moved the steps a 20 s run makes from 50-53 to 56-69 (`bench/load_spread.py`,
    spread ratio 4.8), with 1 thread the loaded spread stayed within the idle one (0.9).
    """
    total = threads or int(os.environ.get("EVOLVE_THREADS", "0") or 0) or (os.cpu_count() or 1)
    want_cpu = False
    if devices is not None:
        items = parse_devices(devices)
        if items[0].startswith("cpu"):
            want_cpu = True
            if ":" in items[0]:
                try:
                    cpu_slots = int(items[0].split(":", 1)[1])
                except ValueError:
                    raise ValueError(
                        f"--devices {devices!r}: write cpu:N with N a number"
                    ) from None
        else:
            for item in items:
                if not item.isdigit():
                    raise ValueError(f"--devices {devices!r}: {item!r} is not a GPU index")
            found = dict(cuda_devices())
            slots = []
            for item in items:
                index = int(item)
                if index not in found:
                    raise ValueError(
                        f"--devices {devices!r}: no CUDA device {index} "
                        f"(found {sorted(found) or 'none'})"
                    )
                slots.append(
                    Slot(f"cuda:{index}", "cuda", found[index], index, max(1, total // len(items)))
                )
            return slots
    if not want_cpu:
        found = cuda_devices()
        if found:
            return [
                Slot(f"cuda:{i}", "cuda", name, i, max(1, total // len(found))) for i, name in found
            ]
    n = max(1, cpu_slots or min(total, MAX_DEFAULT_CPU_SLOTS))
    if n > total:
        raise ValueError(f"{n} CPU slots need at least {n} threads; this machine has {total}")
    per = total // n
    name = cpu_name()
    return [Slot(f"cpu:{i}", "cpu", name, None, per) for i in range(n)]
