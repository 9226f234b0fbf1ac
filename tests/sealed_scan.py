"""Fingerprint search for sealed text: run inside a sandbox, it looks for the evaluation
splits in every readable file it can see.

`scan(patterns, roots)` searches every regular file under `roots` (default: everything
under / except /proc, /sys and /dev, plus /dev/shm) for any of `patterns` (bytes):
plainly, with GNU grep (fixed strings, binary files as text, symbolic links not
followed), and inside compressed files (gzip, bzip2, xz, zip members: wheels, .npz,
torch checkpoints), decompressed in Python. `fingerprints(text, ...)` turns n-grams of
a split into the forms its text can take on disk: UTF-8, JSON-escaped, and token ids as
little-endian uint16 / int32 / int64 (byte tokenizer).

Stdlib only, so it runs in any sandbox with /usr (grep) and a Python. The patterns are
passed hex-encoded and decoded in memory, so the scanner's own source and the train.py
that embeds it hold no fingerprint. Used by tests/test_sealed_text.py; run as a script
it reads `{"patterns": [hex...], "roots": [...] | null}` on stdin and prints one line
`SEALSCAN {json}`.
"""

import bz2
import gzip
import json
import lzma
import os
import subprocess
import sys
import zipfile

SKIP_TOP = ("proc", "sys", "dev")
MAGIC = {
    b"\x1f\x8b": "gzip",
    b"BZh": "bzip2",
    b"\xfd7zXZ\x00": "xz",
    b"PK\x03\x04": "zip",
}
CHUNK = 8 * 2**20  # compressed data is searched as a stream, chunk by chunk


def default_roots():
    """Everything visible: each top-level folder but /proc, /sys and /dev (links such
    as /bin -> usr/bin are skipped: their targets are searched where they are)."""
    roots = [
        "/" + e
        for e in sorted(os.listdir("/"))
        if e not in SKIP_TOP and not os.path.islink("/" + e)
    ]
    return roots + (["/dev/shm"] if os.path.isdir("/dev/shm") else [])


def _grep(patterns, roots):
    """Files under roots holding any pattern, by GNU grep -F (patterns from stdin)."""
    if not roots:
        return []
    out = subprocess.run(
        ["grep", "-r", "-F", "-a", "-l", "--no-messages", "-f", "-", *roots],
        input=b"\n".join(patterns) + b"\n",
        stdout=subprocess.PIPE,
        check=False,
    )
    return sorted(set(out.stdout.decode("utf-8", "replace").splitlines()))


def _streams(path, kind):
    """(name, readable stream) for what a compressed file holds."""
    if kind == "zip":
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                if not info.is_dir():
                    with z.open(info) as member:
                        yield f"{path}!{info.filename}", member
        return
    opener = {"gzip": gzip.open, "bzip2": bz2.open, "xz": lzma.open}[kind]
    with opener(path, "rb") as f:
        yield path, f


def _stream_holds(stream, patterns):
    """Whether the stream holds a pattern (chunks overlap by the longest pattern)."""
    overlap = max(len(p) for p in patterns)
    prev = b""
    while chunk := stream.read(CHUNK):
        window = prev + chunk
        if any(p in window for p in patterns):
            return True
        prev = window[-overlap:]
    return False


def _compressed(patterns, roots):
    """(hits, files looked at, compressed files opened) for compressed files."""
    hits, files, opened = [], 0, 0
    for root in roots:
        for folder, _dirs, names in os.walk(root):
            for name in names:
                path = os.path.join(folder, name)
                try:
                    if not os.path.isfile(path) or os.path.islink(path):
                        continue
                    files += 1
                    with open(path, "rb") as f:
                        head = f.read(6)
                except OSError:
                    continue
                kind = next((k for m, k in MAGIC.items() if head.startswith(m)), None)
                if kind is None:
                    continue
                opened += 1
                try:
                    for inner, stream in _streams(path, kind):
                        if _stream_holds(stream, patterns):
                            hits.append(inner)
                except (OSError, EOFError, ValueError, zipfile.BadZipFile, lzma.LZMAError):
                    continue  # not really compressed, or damaged: its raw bytes were grepped
    return hits, files, opened


def scan(patterns, roots=None):
    roots = list(roots) if roots else default_roots()
    raw = _grep(patterns, roots)
    packed, files, opened = _compressed(patterns, roots)
    return {"hits": sorted(set(raw + packed)), "files": files, "compressed": opened, "roots": roots}


def fingerprints(ngrams):
    """The forms each n-gram (str, no newline) takes on disk."""
    forms = []
    for ngram in ngrams:
        text = ngram.encode("utf-8")
        forms += [text, json.dumps(ngram)[1:-1].encode()]
        for width in (2, 4, 8):  # token ids of the byte tokenizer: uint16 .bin, int32, int64
            forms.append(b"".join(b.to_bytes(width, "little") for b in text))
    return sorted(set(forms))


def run_scan_from_hex(hex_patterns, roots=None):
    """What train.py calls: decode the patterns and print the result line."""
    result = scan([bytes.fromhex(h) for h in hex_patterns], roots)
    print("SEALSCAN " + json.dumps(result), file=sys.stderr, flush=True)
    return result


if __name__ == "__main__":
    request = json.load(sys.stdin)
    run_scan_from_hex(request["patterns"], request.get("roots"))
