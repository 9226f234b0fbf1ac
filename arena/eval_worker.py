"""The evaluator's model worker: the only evaluation process that runs candidate code.

Flow: `arena.evaluate` (trusted, never imports the candidate) starts this file as a
script, sandboxed: it sees the worktree and the checkpoint read-only, no evaluation
splits on disk, no network, nowhere to write that outlives it. It imports torch, then
waits for the parent's go (the evaluator may start it while the candidate still trains,
so that this start-up is off the slot's clock; nothing of the candidate runs, and no
device is touched, before the go). Then the candidate's
train.py is imported under the module name `train` (so its `__main__` block does not
run), the model is rebuilt with `build_model(**build.json)`, `model.pt` is loaded with
`torch.load(weights_only=True)`, and then the worker answers requests on its stdin /
stdout: token ids in, float32 logits out. The trusted parent holds the targets and
computes every number.

Protocol (all integers little-endian uint32):
  worker -> parent  b"R" u32 0                         ready
                    b"E" u32 n, n bytes utf-8          error (then exit)
                    b"O" u32 B, T, V, B*T*V float32    logits
  parent -> worker  b"G"                               go (once, first)
                    b"L" u32 B, T, B*T int64           tokens
The parent ends a worker by killing it; EOF or any other frame also ends it.

It imports only the standard library, numpy and torch (it is started by path, not as
part of the `arena` package). What the candidate prints goes to stderr (the log).
"""

import importlib.util
import json
import os
import struct
import sys
import traceback

U32 = struct.Struct("<I")


def _send(out, tag: bytes, *parts: bytes) -> None:
    out.write(tag)
    for p in parts:
        out.write(p)
    out.flush()


def _send_error(out, message: str) -> None:
    data = message.encode("utf-8", errors="replace")[:8000]
    _send(out, b"E", U32.pack(len(data)), data)


def _read_exact(inp, n: int) -> bytes:
    buf = inp.read(n)
    if buf is None or len(buf) != n:
        raise EOFError("parent closed the pipe")
    return buf


def _short_tb(exc: BaseException) -> str:
    lines = traceback.format_exception(type(exc), exc, exc.__traceback__)
    return "".join(lines[-6:]).strip()


def main() -> int:
    worktree, out_dir, device, threads = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    # The protocol gets private copies of stdin/stdout; fd 1 becomes stderr so that
    # anything the candidate prints lands in the log, not in the protocol stream.
    proto_in = os.fdopen(os.dup(0), "rb", buffering=0)
    proto_out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    sys.stdout = sys.stderr

    try:
        import torch

        torch.set_num_threads(max(1, threads))
    except BaseException as exc:
        _send_error(proto_out, f"importing torch failed: {_short_tb(exc)}")
        return 1
    try:
        if _read_exact(proto_in, 1) != b"G":
            return 0
    except EOFError:
        return 0
    try:
        sys.path.insert(0, worktree)
        sys.argv = [os.path.join(worktree, "train.py")]
        os.chdir(worktree)
        spec = importlib.util.spec_from_file_location("train", os.path.join(worktree, "train.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules["train"] = module
        spec.loader.exec_module(module)
    except BaseException as exc:  # the candidate's import-time code failed: report it
        _send_error(proto_out, f"importing train.py failed: {_short_tb(exc)}")
        return 1
    build = getattr(module, "build_model", None)
    if not callable(build):
        _send_error(proto_out, "train.py has no module-level build_model(**build_kwargs)")
        return 1
    try:
        with open(os.path.join(out_dir, "build.json")) as f:
            kwargs = json.load(f)
        if not isinstance(kwargs, dict):
            raise ValueError("build.json must hold a JSON object of keyword arguments")
    except (OSError, ValueError) as exc:
        _send_error(proto_out, f"cannot read build.json: {exc}")
        return 1
    try:
        model = build(**kwargs)
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"build_model returned {type(model).__name__}, not a torch.nn.Module")
    except BaseException as exc:
        _send_error(proto_out, f"build_model(**build.json) failed: {_short_tb(exc)}")
        return 1
    try:
        state = torch.load(os.path.join(out_dir, "model.pt"), map_location="cpu", weights_only=True)
        model.load_state_dict(state)
        model.to(device).eval()
    except BaseException as exc:
        _send_error(
            proto_out, f"loading model.pt into build_model(**build.json) failed: {_short_tb(exc)}"
        )
        return 1
    _send(proto_out, b"R", U32.pack(0))

    import numpy as np

    while True:
        try:
            tag = _read_exact(proto_in, 1)
        except EOFError:
            return 0
        if tag != b"L":
            return 0
        b, t = U32.unpack(_read_exact(proto_in, 4))[0], U32.unpack(_read_exact(proto_in, 4))[0]
        idx = np.frombuffer(_read_exact(proto_in, 8 * b * t), dtype=np.int64).reshape(b, t)
        try:
            with torch.no_grad():
                logits = model(torch.from_numpy(idx.copy()).to(device))
            if not isinstance(logits, torch.Tensor) or logits.dim() != 3:
                raise TypeError(
                    f"model(idx) must return a [B, T, vocab] tensor, got "
                    f"{getattr(logits, 'shape', type(logits).__name__)}"
                )
            arr = logits.detach().to("cpu", torch.float32).contiguous().numpy()
        except BaseException as exc:
            _send_error(proto_out, f"model(idx) failed: {_short_tb(exc)}")
            return 1
        _send(
            proto_out,
            b"O",
            U32.pack(arr.shape[0]),
            U32.pack(arr.shape[1]),
            U32.pack(arr.shape[2]),
            arr.tobytes(),
        )


if __name__ == "__main__":
    sys.exit(main())
