"""
The seed train.py: a small modern GPT, trained for a fixed time budget.

This is the one file the agents edit. Everything it may rely on comes from the
harness (prepare.py): the budget, seed, device and output directory, the train-split
dataloader, the budget clock and save_for_eval. The arena evaluates the saved model
itself, in another process; the numbers printed here are for humans only.

Contract: module-level build_model(**build_kwargs) that the evaluator can call,
training only under `if __name__ == "__main__":`, and model(idx) returning logits
[B, T, vocab_size].
"""

import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

import prepare  # before torch: it sets OpenMP's thread settings that the CPU budget relies on

# ---------------------------------------------------------------------------
# Hyperparameters (edit these). Values with `if ON_GPU else` are sized per device.
# GPU_SIZE "small" fits the embedded corpus (3.6M training bytes): on an H200 a
# 25M-parameter model sees it 16 times in 60 s and overfits (val_bpb 2.15 against 1.66
# for the 3.3M small one). "large" (~85M parameters, 128-wide heads for flash attention,
# 128K tokens a step in bf16) is for tinystories or climbmix sized data on an H100-class GPU.

ON_GPU = prepare.device_type() == "cuda"
GPU_SIZE = "small"  # "small" (embedded corpus) or "large" (tinystories / climbmix)

DEPTH = 4  # transformer blocks
MODEL_DIM = 256 if ON_GPU else 128  # residual stream width
N_HEADS = 4  # attention heads (MODEL_DIM must divide by it)
MLP_RATIO = 4  # hidden width of the MLP, as a multiple of MODEL_DIM
SEQ_LEN = 256 if ON_GPU else 128  # training context (at most prepare.SEQ_LEN)
BATCH_SIZE = 128 if ON_GPU else 32  # sequences per step
OPTIMIZER = "muon"  # "muon" (orthogonalized momentum) for hidden matrices, or "adamw"
LEARNING_RATE = 3e-3  # AdamW peak learning rate
MUON_LR = 0.02  # Muon peak learning rate (hidden matrices only)
WEIGHT_DECAY = 0.0
ADAM_BETAS = (0.9, 0.95)
WARMUP_FRAC = 0.02  # fraction of the budget spent warming the learning rate up
WARMDOWN_FRAC = 0.4  # fraction of the budget at the end spent decaying it to zero
GRAD_CLIP = 1.0
ROPE_BASE = 10000.0
LOGIT_SOFTCAP = 15.0  # tanh cap on the output logits; 0 disables it
COMPILE = ON_GPU  # torch.compile the model (slow to start on CPU)
if ON_GPU and GPU_SIZE == "large":  # ~85M parameters, 128-wide heads, 128K tokens a step
    DEPTH, MODEL_DIM, N_HEADS, SEQ_LEN, BATCH_SIZE = 12, 768, 6, 256, 512

# ---------------------------------------------------------------------------
# Model


def rms_norm(x):
    return F.rms_norm(x, (x.size(-1),))


def rotary(x, cos, sin):
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class Attention(nn.Module):
    def __init__(self, dim, n_heads):
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)

    def forward(self, x, cos, sin):
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_heads, C // self.n_heads).unbind(2)
        q, k = rms_norm(q), rms_norm(k)  # QK-norm keeps attention stable at high LR
        q, k = rotary(q, cos, sin), rotary(k, cos, sin)
        y = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True
        )
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, dim, ratio):
        super().__init__()
        self.up = nn.Linear(dim, ratio * dim, bias=False)
        self.down = nn.Linear(ratio * dim, dim, bias=False)

    def forward(self, x):
        return self.down(F.relu(self.up(x)).square())  # ReLU squared


class Block(nn.Module):
    def __init__(self, dim, n_heads, mlp_ratio):
        super().__init__()
        self.attn = Attention(dim, n_heads)
        self.mlp = MLP(dim, mlp_ratio)

    def forward(self, x, cos, sin):
        x = x + self.attn(rms_norm(x), cos, sin)
        return x + self.mlp(rms_norm(x))


class GPT(nn.Module):
    def __init__(self, vocab_size, depth, dim, n_heads, mlp_ratio, max_seq_len, rope_base, softcap):
        super().__init__()
        self.softcap = softcap
        self.embed = nn.Embedding(vocab_size, dim)
        self.blocks = nn.ModuleList(Block(dim, n_heads, mlp_ratio) for _ in range(depth))
        self.head = nn.Linear(dim, vocab_size, bias=False)
        head_dim = dim // n_heads
        freqs = rope_base ** (-torch.arange(0, head_dim, 2).float() / head_dim)
        angles = torch.outer(torch.arange(max_seq_len).float(), freqs)
        self.register_buffer("cos", angles.cos()[None, :, None, :], persistent=False)
        self.register_buffer("sin", angles.sin()[None, :, None, :], persistent=False)
        self.reset_parameters()

    def reset_parameters(self):
        for name, p in self.named_parameters():
            if name.endswith("proj.weight") or name.endswith("down.weight") or name == "head.weight":
                nn.init.zeros_(p)  # residual branches and the head start as no-ops
            elif p.dim() == 2:
                nn.init.normal_(p, std=p.size(-1) ** -0.5 if "embed" not in name else 1.0)

    def forward(self, idx):
        T = idx.size(1)
        x = rms_norm(self.embed(idx))
        cos, sin = self.cos[:, :T].to(x.dtype), self.sin[:, :T].to(x.dtype)
        for block in self.blocks:
            x = block(x, cos, sin)
        logits = self.head(rms_norm(x)).float()
        if self.softcap:
            logits = self.softcap * torch.tanh(logits / self.softcap)
        return logits


def build_model(**kw):
    """Rebuild the model from the kwargs saved with it (the evaluator calls this)."""
    return GPT(**kw)


# ---------------------------------------------------------------------------
# Optimizer: AdamW, or Muon (orthogonalized momentum) for the hidden matrices


def newton_schulz(g, steps=5):
    """Approximately orthogonalize each matrix of the stack g (the Muon update direction)."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.bfloat16() if g.is_cuda else g.float()
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    transposed = x.size(-2) > x.size(-1)
    if transposed:
        x = x.mT
    for _ in range(steps):
        s = x @ x.mT
        x = a * x + (b * s + c * s @ s) @ x
    return (x.mT if transposed else x).to(g.dtype)


class Muon(torch.optim.Optimizer):
    """Nesterov momentum, orthogonalized. Matrices of one shape are updated as one stack:
    a few large kernels instead of many small ones per step."""

    def __init__(self, params, lr, momentum=0.95):
        super().__init__(params, dict(lr=lr, momentum=momentum))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            by_shape = {}
            for p in group["params"]:
                if p.grad is not None:
                    by_shape.setdefault(p.shape, []).append(p)
            for params in by_shape.values():
                grads = [p.grad for p in params]
                bufs = [self.state[p].setdefault("momentum", torch.zeros_like(p)) for p in params]
                torch._foreach_mul_(bufs, group["momentum"])
                torch._foreach_add_(bufs, grads)
                nesterov = torch._foreach_add(grads, bufs, alpha=group["momentum"])
                updates = newton_schulz(torch.stack(nesterov))
                scale = max(1.0, params[0].size(0) / params[0].size(1)) ** 0.5
                torch._foreach_add_(params, list(updates.unbind(0)), alpha=-group["lr"] * scale)


def build_optimizers(model):
    hidden = [p for n, p in model.named_parameters() if p.dim() == 2 and n.startswith("blocks")]
    if OPTIMIZER == "muon":
        other = [p for n, p in model.named_parameters() if not (p.dim() == 2 and n.startswith("blocks"))]
        opts = [Muon(hidden, lr=MUON_LR),
                torch.optim.AdamW(other, lr=LEARNING_RATE, betas=ADAM_BETAS, weight_decay=0.0)]
    else:
        decay = [p for p in model.parameters() if p.dim() == 2]
        no_decay = [p for p in model.parameters() if p.dim() < 2]
        groups = [dict(params=decay, weight_decay=WEIGHT_DECAY), dict(params=no_decay, weight_decay=0.0)]
        opts = [torch.optim.AdamW(groups, lr=LEARNING_RATE, betas=ADAM_BETAS)]
    for opt in opts:
        for group in opt.param_groups:
            group["initial_lr"] = group["lr"]
    return opts


def lr_multiplier(progress):
    """Learning-rate schedule driven by the fraction of the budget spent."""
    if progress < WARMUP_FRAC:
        return (progress + 1e-3) / WARMUP_FRAC
    if progress > 1 - WARMDOWN_FRAC:
        return max(0.0, (1 - progress) / WARMDOWN_FRAC)
    return 1.0


# ---------------------------------------------------------------------------
# Training

# Dense bf16 tensor-core peak FLOP/s by device name (for MFU; no sparsity)
PEAK_BF16_FLOPS = {
    "H200": 989.5e12, "H100 NVL": 835e12, "H100 PCIe": 756e12, "H100": 989.5e12,
    "GH200": 989.5e12, "B200": 2250e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12,
    "A10G": 70e12, "A10": 125e12, "RTX 4090": 165e12, "RTX 3090": 71e12,
}


def peak_flops(device):
    """This GPU's dense bf16 peak, or None when its name is not in the table."""
    name = torch.cuda.get_device_name(device)
    for key, flops in PEAK_BF16_FLOPS.items():
        if key in name:
            return flops
    return None


def main():
    rt = prepare.runtime()
    meta = prepare.load_meta()
    build_kwargs = dict(
        vocab_size=meta.vocab_size, depth=DEPTH, dim=MODEL_DIM, n_heads=N_HEADS,
        mlp_ratio=MLP_RATIO, max_seq_len=prepare.SEQ_LEN, rope_base=ROPE_BASE, softcap=LOGIT_SOFTCAP,
    )
    model = build_model(**build_kwargs).to(rt.device)
    n_params = sum(p.numel() for p in model.parameters())
    opts = build_optimizers(model)
    step_model = torch.compile(model) if COMPILE else model
    loader = prepare.TrainLoader(BATCH_SIZE, SEQ_LEN, device=rt.device, seed=rt.seed)
    clock = prepare.BudgetClock(rt.budget_s, device=rt.device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=rt.device.startswith("cuda"))
    if rt.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(rt.device)
    print(f"device {rt.device}, {n_params / 1e6:.2f}M parameters, budget {rt.budget_s:.0f}s", flush=True)

    t_start = time.time()
    loss = torch.tensor(float("nan"))
    next_report = 0.0  # print a progress line every 5% of the budget
    while not clock.done:
        x, y = next(loader)
        with autocast:
            logits = step_model(x)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), y.reshape(-1))
        loss.backward()
        if GRAD_CLIP:
            torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        multiplier = lr_multiplier(clock.progress())
        for opt in opts:
            for group in opt.param_groups:
                group["lr"] = group["initial_lr"] * multiplier
            opt.step()
        model.zero_grad(set_to_none=True)
        clock.tick()
        if clock.progress() >= next_report:
            next_report = clock.progress() + 0.05
            counted_tokens = max(clock.steps - prepare.WARMUP_STEPS, 0) * BATCH_SIZE * SEQ_LEN
            tok_per_sec = counted_tokens / max(clock.elapsed(), 1e-9)
            remaining = rt.budget_s * (1 - clock.progress())
            print(f"step {clock.steps} ({100 * clock.progress():.1f}%) | loss: {loss.item():.4f} | "
                  f"tok/sec: {tok_per_sec:.0f} | remaining: {remaining:.0f}s", flush=True)
        if not math.isfinite(loss.item()):
            print("loss is not finite; stopping", flush=True)
            break

    training_seconds = clock.elapsed()
    tokens = max(clock.steps - prepare.WARMUP_STEPS, 0) * BATCH_SIZE * SEQ_LEN
    flops_per_token = 6 * n_params + 12 * DEPTH * MODEL_DIM * SEQ_LEN
    peak_mb = torch.cuda.max_memory_allocated(rt.device) / 2**20 if rt.device.startswith("cuda") else 0.0
    stats = {
        "train_loss": loss.item(),
        "training_seconds": training_seconds,
        "total_seconds": time.time() - t_start,
        "peak_vram_mb": peak_mb,
        "tokens_per_second": tokens / max(training_seconds, 1e-9),
        "total_tokens_M": tokens / 1e6,
        "num_steps": clock.steps,
        "num_params_M": n_params / 1e6,
        "depth": DEPTH,
    }
    peak = peak_flops(rt.device) if rt.device.startswith("cuda") else None
    if peak:
        stats["mfu_percent"] = 100 * flops_per_token * stats["tokens_per_second"] / peak
    prepare.save_for_eval(model, build_kwargs, stats)
    prepare.print_summary(stats)


if __name__ == "__main__":
    main()
