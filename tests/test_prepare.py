"""The harness: cache building, bad input, the dataloader, the clock, the metric."""

import http.server
import json
import math
import os
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

import prepare

SAMPLE = "In the beginning was the word, and the word was with the harness.\n" * 40


def make_corpus(folder: Path, n_docs: int = 12) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n_docs):
        (folder / f"doc{i:02d}.txt").write_text(f"Document {i}.\n" + SAMPLE)
    return folder


def build(tmp_path: Path, tokenizer: str = "byte", vocab: int = 300) -> prepare.DataMeta:
    docs = prepare._text_documents(make_corpus(tmp_path / "corpus"))
    return prepare.build_cache(tmp_path / "data", docs, "text", tokenizer, vocab)


def test_cache_layout_keeps_eval_splits_apart(tmp_path):
    meta = build(tmp_path)
    data = tmp_path / "data"
    assert meta.vocab_size == 256 and meta.tokenizer == "byte"
    assert (data / "train" / "tokens.bin").exists()
    assert sorted(p.name for p in (data / "eval").iterdir()) == ["test.bin", "val.bin"]
    manifest = json.loads((data / "manifest.json").read_text())
    assert manifest["complete"] is True
    assert set(manifest["files"]) == {"train/tokens.bin", "eval/val.bin", "eval/test.bin", "tokenizer.json"}
    assert all(meta.split_tokens[s] > 0 for s in ("train", "val", "test"))
    assert not list(tmp_path.glob("data.partial-*"))


def test_split_is_by_whole_document_and_fixed():
    docs = [f"doc {i} " * 50 for i in range(40)]
    a, b = prepare.split_documents(docs), prepare.split_documents(docs)
    assert a == b
    assert not set(a["val"]) & set(a["train"]) and not set(a["test"]) & set(a["train"])
    assert len(a["train"]) + len(a["val"]) + len(a["test"]) == 40


def test_kjv_corpus_is_split_by_book():
    docs = prepare._kjv_documents()
    assert len(docs) == 66 and docs[0].startswith("Genesis\nIn the beginning")


def test_bpe_token_bytes_count_every_text_byte(tmp_path):
    meta = build(tmp_path, "bpe", 300)
    bpe = prepare.Tokenizer("bpe", __import__("tokenizers").Tokenizer.from_file(str(tmp_path / "data" / "bpe.json")))
    text = "Document 3. In the beginning — naïve café\n"
    ids = bpe.encode(text)
    assert int(meta.token_bytes[ids].sum()) == len(text.encode("utf-8"))
    assert meta.token_bytes[bpe.bpe.token_to_id(prepare.EOT)] == 0


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda p: p / "missing", "does not exist"),
        (lambda p: (p / "empty").mkdir() or p / "empty", "no .txt"),
        (lambda p: (p / "blank.txt").write_text("  \n") and p / "blank.txt", "empty"),
        (lambda p: (p / "latin.txt").write_bytes(b"caf\xe9 " * 10) and p / "latin.txt", "not UTF-8"),
        (lambda p: (p / "bad.jsonl").write_text('{"txt": 1}\n') and p / "bad.jsonl", "bad.jsonl:1"),
    ],
)
def test_bad_text_input_is_one_clear_error(tmp_path, capsys, setup, message):
    path = setup(tmp_path)
    code = prepare.main(["--text", str(path), "--cache-dir", str(tmp_path / "cache")])
    err = capsys.readouterr().err.strip()
    assert code == 1 and message in err and err.startswith("error:") and "\n" not in err
    assert not (tmp_path / "cache" / "data").exists() or not any((tmp_path / "cache" / "data").iterdir())


def test_corrupt_or_incomplete_cache_is_refused(tmp_path):
    build(tmp_path)
    data = tmp_path / "data"
    val = data / "eval" / "val.bin"
    raw = bytearray(val.read_bytes())
    raw[0] ^= 0xFF
    val.write_bytes(bytes(raw))
    with pytest.raises(prepare.HarnessError, match="hash"):
        prepare.load_split("val", data)
    val.write_bytes(bytes(raw[:-2]))
    with pytest.raises(prepare.HarnessError, match="wrong size"):
        prepare.load_split("val", data)
    manifest = json.loads((data / "manifest.json").read_text())
    manifest["complete"] = False
    (data / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(prepare.HarnessError, match="incomplete"):
        prepare.load_meta(data)
    (data / "manifest.json").write_text('{"complete": tr')
    with pytest.raises(prepare.HarnessError, match="corrupt"):
        prepare.load_meta(data)


def test_cli_rebuilds_a_corrupt_cache(tmp_path, capsys):
    corpus = make_corpus(tmp_path / "corpus")
    args = ["--text", str(corpus), "--data-dir", str(tmp_path / "data")]
    assert prepare.main(args) == 0
    (tmp_path / "data" / "manifest.json").write_text("garbage")
    assert prepare.main(args) == 0
    assert prepare.load_meta(tmp_path / "data").vocab_size == 256
    assert prepare.main(args + ["--verify"]) == 0


def test_unknown_device_names_the_fix(monkeypatch):
    monkeypatch.setenv("EVOLVE_DEVICE", "tpu")
    with pytest.raises(prepare.HarnessError, match="use cpu, cuda or cuda:N"):
        prepare.runtime()


def test_loader_is_deterministic_and_shifted(tmp_path):
    build(tmp_path)
    a = prepare.TrainLoader(4, 16, seed=7, data_dir=tmp_path / "data")
    b = prepare.TrainLoader(4, 16, seed=7, data_dir=tmp_path / "data")
    (xa, ya), (xb, yb) = next(a), next(b)
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert xa.shape == (4, 16) and xa.dtype == torch.int64
    assert torch.equal(xa[:, 1:], ya[:, :-1])


def test_budget_clock_skips_warmup_steps():
    clock = prepare.BudgetClock(budget_s=0.05)
    for _ in range(prepare.WARMUP_STEPS):
        clock.tick()
        assert clock.elapsed() == 0.0
    while not clock.done:
        clock.tick()
    assert clock.progress() == 1.0 and clock.steps > prepare.WARMUP_STEPS


class UniformModel(torch.nn.Module):
    def __init__(self, vocab):
        super().__init__()
        self.vocab = vocab

    def forward(self, idx):
        return torch.zeros(*idx.shape, self.vocab)


def test_bpb_of_uniform_model_is_log2_vocab_per_token(tmp_path):
    meta = build(tmp_path)
    tokens = prepare.load_split("val", tmp_path / "data")
    result = prepare.evaluate_bpb(UniformModel(256), tokens, meta.token_bytes, seq_len=32)
    assert result.bpb == pytest.approx(8.0)
    bpe_meta = build(tmp_path / "bpe", "bpe", 300)
    bpe_tokens = prepare.load_split("val", tmp_path / "bpe" / "data")
    r = prepare.evaluate_bpb(UniformModel(300), bpe_tokens, bpe_meta.token_bytes, seq_len=32)
    assert r.nats / r.n_tokens == pytest.approx(math.log(300))
    targets = np.asarray(bpe_tokens[1:], dtype=np.int64)  # every target, the tail too
    assert r.n_bytes == int(bpe_meta.token_bytes[targets].sum())
    assert r.bpb == pytest.approx(r.nats / (math.log(2) * r.n_bytes))


def test_bpb_rejects_wrong_logit_shape(tmp_path):
    meta = build(tmp_path)
    tokens = prepare.load_split("val", tmp_path / "data")
    with pytest.raises(prepare.HarnessError, match="logits have shape"):
        prepare.evaluate_bpb(UniformModel(100), tokens, meta.token_bytes, seq_len=32)


class LeakyModel(torch.nn.Module):
    """Logits at position t depend on the token at t+1: a causality violation."""

    def forward(self, idx):
        nxt = torch.roll(idx, -1, dims=1)
        return torch.nn.functional.one_hot(nxt, 64).float() * 5


def test_causality_probe_flags_future_leak_and_passes_causal_model():
    leak = prepare.causality_probe(LeakyModel(), 64, seq_len=32)
    assert not leak.ok and leak.first_bad_position is not None
    ok = prepare.causality_probe(lambda idx: torch.nn.functional.one_hot(idx, 64).float(), 64, seq_len=32)
    assert ok.ok and ok.max_change == 0.0


class RangeHandler(http.server.BaseHTTPRequestHandler):
    payload = bytes(range(256)) * 64
    cut_first = True  # the first full request dies half-way, like a dropped connection

    def do_GET(self):
        start = 0
        if "Range" in self.headers:
            start = int(self.headers["Range"].split("=")[1].split("-")[0])
        body = self.payload[start:]
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if RangeHandler.cut_first and not start:
            RangeHandler.cut_first = False
            self.wfile.write(body[: len(body) // 3])
            self.wfile.flush()
            self.connection.close()
            return
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_download_resumes_after_a_dropped_connection(tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RangeHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/shard.bin"
        dest = prepare.download(url, tmp_path / "shard.bin", retries=3)
        assert dest.read_bytes() == RangeHandler.payload
        assert not (tmp_path / "shard.bin.part").exists()
    finally:
        server.shutdown()


def test_failed_download_leaves_only_a_part_file(tmp_path):
    with pytest.raises(prepare.HarnessError, match="run the same command again to resume"):
        prepare.download("http://127.0.0.1:9/none.bin", tmp_path / "none.bin", retries=2)
    assert not (tmp_path / "none.bin").exists()


def test_template_trains_and_hands_over_a_loadable_model(tmp_path):
    import subprocess
    import sys

    build(tmp_path)
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, EVOLVE_DATA=str(tmp_path / "data"), EVOLVE_OUT=str(tmp_path / "out"),
               EVOLVE_BUDGET_S="1", EVOLVE_DEVICE="cpu", EVOLVE_THREADS="1", PYTHONPATH=str(root))
    proc = subprocess.run([sys.executable, str(root / "train_template.py")], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    summary = proc.stdout.split("---\n")[-1]
    keys = {line.split(":")[0] for line in summary.splitlines()}
    assert {"training_seconds", "peak_vram_mb", "num_steps", "num_params_M"} <= keys
    kwargs = json.loads((tmp_path / "out" / "build.json").read_text())
    import train_template

    model = train_template.build_model(**kwargs)
    model.load_state_dict(torch.load(tmp_path / "out" / "model.pt", weights_only=True))
    tokens = prepare.load_split("val", tmp_path / "data")
    meta = prepare.load_meta(tmp_path / "data")
    bpb = prepare.evaluate_bpb(model, tokens, meta.token_bytes).bpb
    assert 0 < bpb < 8.0
    assert prepare.causality_probe(model, 256, seq_len=prepare.SEQ_LEN).ok


# ---------------------------------------------------------------------------
# Integrity of the metric (issue 8): same text for every tokenizer, log-probability
# checks with an absolute tolerance, unrelated rows, a hashed tokenizer


@pytest.mark.slow
def test_byte_and_bpe_caches_score_the_same_text(tmp_path):
    docs = [f"Book {i}\n" + f"Verse {i} of the harness, line by line.\n" * (10 + 3 * i) for i in range(30)]
    byte = prepare.build_cache(tmp_path / "byte", docs, "text", "byte")
    bpe = prepare.build_cache(tmp_path / "bpe", docs, "text", "bpe", 400)
    from tokenizers import Tokenizer as HF

    decoder = HF.from_file(str(tmp_path / "bpe" / "bpe.json"))
    for split in ("val", "test"):
        b_tokens = prepare.load_split(split, tmp_path / "byte")
        p_tokens = prepare.load_split(split, tmp_path / "bpe")
        text = bytes(np.asarray(b_tokens, dtype=np.uint8)).decode("utf-8")
        assert decoder.decode(p_tokens.tolist(), skip_special_tokens=False) == text
        assert len(text.encode()) <= prepare.MAX_EVAL_BYTES
        rb = prepare.evaluate_bpb(UniformModel(256), b_tokens, byte.token_bytes, seq_len=32)
        rp = prepare.evaluate_bpb(UniformModel(bpe.vocab_size), p_tokens, bpe.token_bytes, seq_len=32)
        assert rb.bpb == pytest.approx(8.0)
        # both score every byte but the first token's: separators count for both
        first = int(bpe.token_bytes[p_tokens[0]])
        assert rb.n_bytes == len(text.encode()) - 1 and rp.n_bytes == len(text.encode()) - first


def test_eval_splits_are_capped_by_whole_documents_on_text():
    docs = ["a" * 100 + "\n", "b" * 60 + "\nbb\n" + "b" * 60 + "\n", "c" * 10 + "\n"]
    capped = prepare.cap_documents(docs, max_bytes=180)
    assert capped[0] == docs[0] and capped[1] == "b" * 60 + "\nbb\n"  # cut at a line break
    assert prepare.cap_documents(docs, max_bytes=10_000) == docs
    assert sum(len(d) + len(prepare.DOC_SEPARATOR) for d in capped) <= 180


def test_a_tampered_tokenizer_or_an_old_cache_is_refused(tmp_path):
    build(tmp_path)
    data = tmp_path / "data"
    tok = json.loads((data / "tokenizer.json").read_text())
    tok["token_bytes"][65] = 50  # more bytes per token: a lower bpb for free
    (data / "tokenizer.json").write_text(json.dumps(tok))
    with pytest.raises(prepare.HarnessError, match="tokenizer.json is missing or fails its hash"):
        prepare.load_meta(data)
    build(tmp_path)
    manifest = json.loads((data / "manifest.json").read_text())
    del manifest["format"]
    (data / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(prepare.HarnessError, match="older prepare.py.*--force"):
        prepare.load_meta(data)


def test_every_target_is_scored_once_in_unrelated_rows():
    windows = prepare.eval_windows(1000, 32)
    scored = sorted(s + 1 + p for s, skip in windows for p in range(skip, 32))
    assert scored == list(range(1, 1000))
    seen = []
    tokens = np.arange(1000, dtype=np.uint16) % 256
    prepare.evaluate_bpb(UniformModel(256), tokens, np.ones(256), seq_len=32, batch_size=8,
                         seed=5, observe=lambda x, y, counted, logits: seen.append(x[:, 0].tolist()))
    starts = [s for batch in seen for s in batch]
    assert starts != sorted(starts)  # shuffled: rows of a batch are not consecutive windows


class Peeker(torch.nn.Module):
    """Puts its mass on the next input token (a look-ahead), plus `offset` on every logit
    and `spike` on token 0: the scale tricks that widened the old relative tolerance."""

    def __init__(self, offset=0.0, spike=0.0, vocab=64):
        super().__init__()
        self.offset, self.spike, self.vocab = offset, spike, vocab

    def forward(self, idx):
        nxt = torch.roll(idx, -1, dims=1)
        out = torch.nn.functional.one_hot(nxt, self.vocab).float() * 8 + self.offset
        out[..., 0] += self.spike
        return out


def test_logit_scale_tricks_do_not_hide_a_look_ahead():
    assert not prepare.causality_probe(Peeker(), 64, seq_len=32).ok
    # a constant offset is harmless on its own: log-probabilities ignore it
    assert prepare.causality_probe(lambda idx: torch.nn.functional.one_hot(idx, 64).float() + 500, 64,
                                   seq_len=32).ok
    for offset, spike in ((1e4, 0.0), (0.0, -1e7)):  # absurd: refused outright
        with pytest.raises(prepare.LogitError, match="must lie within"):
            prepare.causality_probe(Peeker(offset, spike), 64, seq_len=32)
    for offset, spike in ((990.0, 0.0), (0.0, -990.0)):  # within the limit: still caught
        probe = prepare.causality_probe(Peeker(offset, spike), 64, seq_len=32)
        assert not probe.ok and probe.max_change > 1.0, (offset, spike)


def test_absurd_and_non_finite_logits_are_refused():
    ids = torch.zeros(1, 4, 1, dtype=torch.int64)
    with pytest.raises(prepare.LogitError, match="magnitude 1e\\+07"):
        prepare.target_log_probs(torch.full((1, 4, 8), -1e7), ids)
    with pytest.raises(prepare.NonFiniteLogits):
        prepare.target_log_probs(torch.full((1, 4, 8), float("nan")), ids)
    lp = prepare.target_log_probs(torch.zeros(1, 4, 8) + 999.0, ids)
    # within the limit the log-probabilities are exact to ~1e-4 nats even at the edge
    assert lp.dtype == torch.float64 and torch.allclose(lp, torch.full_like(lp, -math.log(8)), rtol=0, atol=1e-4)


class Memoizer:
    """Looks ahead, but answers any input whose rows start like one it has seen with the
    answer it gave then: it passes every check made on the same process."""

    def __init__(self):
        self.memo = {}

    def __call__(self, idx):
        out = Peeker()(idx)
        for r in range(idx.shape[0]):
            for t in range(idx.shape[1]):
                key = tuple(idx[r, : t + 1].tolist())
                out[r, t] = self.memo.setdefault(key, out[r, t])
        return out


def test_a_memoizing_model_passes_on_one_process_and_fails_on_a_fresh_one():
    memo = Memoizer()
    assert prepare.causality_probe(memo, 64, seq_len=32, seed=3).ok  # the old arrangement
    assert not prepare.causality_probe(Memoizer(), 64, seq_len=32, seed=3, check_fn=Memoizer()).ok


class CrossRow(torch.nn.Module):
    """Causal within a row, but row r's logits also see row r+1's first token."""

    def forward(self, idx):
        out = torch.nn.functional.one_hot(idx, 64).float()
        out[:, -1] += torch.nn.functional.one_hot(torch.roll(idx[:, 0], -1), 64).float() * 8
        return out


def test_a_cross_row_leak_is_caught_at_the_last_position():
    probe = prepare.causality_probe(CrossRow(), 64, seq_len=32)
    assert not probe.ok and probe.first_bad_position == 31


def test_the_score_does_not_depend_on_the_secret_window_order():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(256, 8), torch.nn.Linear(8, 256))
    tokens = np.random.default_rng(0).integers(0, 256, 3000).astype(np.uint16)
    with torch.no_grad():
        runs = {prepare.evaluate_bpb(model, tokens, np.ones(256), seq_len=32, seed=s).bpb for s in range(4)}
    assert len(runs) == 1  # bit-identical: runs on two machines (or orders) compare exactly
