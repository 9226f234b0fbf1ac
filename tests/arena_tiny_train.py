"""A tiny contract-following train.py for the arena's tests: a 2-layer byte model.

Each position sees only its own token and the one before it (a causal width-2 mix),
so it is causal by construction. It stops at the budget or after MAX_STEPS steps,
whichever comes first, so two runs with the same seed do the same work.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

import prepare

DIM = 32
MAX_STEPS = 30
BATCH_SIZE = 8
SEQ_LEN = 64
LEARNING_RATE = 1e-2


class TinyModel(nn.Module):
    def __init__(self, vocab_size, dim):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim)
        self.prev = nn.Linear(dim, dim)
        self.hidden = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, vocab_size)

    def forward(self, idx):
        h = self.embed(idx)
        shifted = F.pad(h, (0, 0, 1, 0))[:, :-1]  # the previous position's embedding
        h = torch.relu(self.hidden(h) + self.prev(shifted))
        return self.head(h)


def build_model(**kw):
    return TinyModel(**kw)


def main():
    rt = prepare.runtime()
    meta = prepare.load_meta()
    build_kwargs = dict(vocab_size=meta.vocab_size, dim=DIM)
    model = build_model(**build_kwargs).to(rt.device)
    opt = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE)
    loader = prepare.TrainLoader(BATCH_SIZE, SEQ_LEN, device=rt.device, seed=rt.seed)
    clock = prepare.BudgetClock(rt.budget_s, device=rt.device)
    loss = torch.tensor(0.0)
    while not clock.done and clock.steps < MAX_STEPS:
        x, y = next(loader)
        logits = model(x)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), y.reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        clock.tick()
    stats = {
        "train_loss": loss.item(),
        "num_steps": clock.steps,
        "training_seconds": clock.elapsed(),
        "device": rt.device,
    }
    prepare.save_for_eval(model, build_kwargs, stats)
    prepare.print_summary(stats)


if __name__ == "__main__":
    main()
