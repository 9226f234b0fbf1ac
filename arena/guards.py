"""Guards: the checks a candidate commit passes before it is allowed to run.

Flow: repo commit -> `check(repo, commit, known_diffs)` -> run (when ok). Each refusal
carries the status `guard_refused` and a one-line message the next prompt can use.
Also here: `scrub_env`, which removes credentials from the environment a candidate
(and its evaluator worker) is started with.

What it checks:
- the diff against every parent touches only `train.py` (nothing added, removed or
  renamed elsewhere);
- `prepare.py` is byte-identical to the root commit's;
- `train.py` compiles (`compile()`, nothing is executed);
- the normalised diff is not empty (a no-op) and not one already seen (a duplicate).

What it does not do: judge whether the change is a good idea, or look for hostile
code (that is the sandbox's and the evaluator's job).
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
import tokenize
from collections.abc import Container, Mapping
from dataclasses import dataclass

from arena.records import Status
from arena.repo import ExperimentRepo, RepoError

log = logging.getLogger(__name__)

EDITABLE = "train.py"
HARNESS = "prepare.py"


@dataclass(frozen=True)
class GuardVerdict:
    ok: bool
    status: Status  # PROPOSED when ok, GUARD_REFUSED otherwise
    message: str
    normalized_diff_hash: str


def normalize_source(source: str) -> str:
    """train.py with comments, blank lines and trailing whitespace removed, so that
    edits that only touch those count as no-ops (and as duplicates of each other).
    Falls back to stripping whitespace when the source does not tokenize."""
    try:
        tokens = [
            t
            for t in tokenize.generate_tokens(io.StringIO(source).readline)
            if t.type not in (tokenize.COMMENT, tokenize.NL)
        ]
        text = tokenize.untokenize((t.type, t.string) for t in tokens)
    except (tokenize.TokenError, IndentationError, SyntaxError):
        text = source
    lines = [line.rstrip() for line in text.splitlines()]
    return "\n".join(line for line in lines if line.strip())


def normalized_hash(source: str) -> str:
    return hashlib.sha256(normalize_source(source).encode()).hexdigest()


def check_safety(repo: ExperimentRepo, commit: str) -> GuardVerdict:
    """The checks the arena repeats before every run, for any commit, the root
    included: only train.py changed, prepare.py byte-identical to the root's, train.py
    compiles. (No novelty checks: a candidate is run on several seeds.)"""
    return _check(repo, commit, (), novelty=False)


def check(repo: ExperimentRepo, commit: str, known_diffs: Container[str] = ()) -> GuardVerdict:
    """Check candidate `commit`. `known_diffs` holds the `normalized_diff_hash` of
    every candidate already run (the population's store keeps them). The hash names
    the normalised train.py the commit would run, so two different edits that arrive
    at the same program are duplicates."""
    return _check(repo, commit, known_diffs, novelty=True)


def _check(
    repo: ExperimentRepo, commit: str, known_diffs: Container[str], novelty: bool
) -> GuardVerdict:

    def refuse(message: str, digest: str = "") -> GuardVerdict:
        log.info("guard refused %s: %s", commit[:10], message)
        return GuardVerdict(False, Status.GUARD_REFUSED, message, digest)

    try:
        commit = repo.resolve(commit)
        parents = repo.parents(commit)
        source = repo.read_file(commit, EDITABLE)
    except RepoError as exc:
        return refuse(str(exc))
    digest = normalized_hash(source)
    if not parents and novelty:
        return refuse(
            "the root commit is not a candidate; commit a change to train.py on top of it", digest
        )

    for parent, changed in repo.changed_files(commit).items():
        others = sorted(set(changed) - {EDITABLE})
        if others:
            return refuse(
                f"the diff changes {', '.join(others)} besides train.py; only train.py may change",
                digest,
            )
    root = repo.root_commit
    try:
        harness_ok = repo.read_bytes(commit, HARNESS) == repo.read_bytes(root, HARNESS)
    except (KeyError, RepoError):
        harness_ok = False
    if not harness_ok:
        return refuse(
            "prepare.py differs from the root commit's; the harness must not change", digest
        )
    try:
        compile(source, "train.py", "exec", dont_inherit=True)
    except (SyntaxError, ValueError) as exc:
        line = getattr(exc, "lineno", None)
        where = f" (line {line})" if line else ""
        return refuse(
            f"train.py does not compile{where}: {exc.__class__.__name__}: {_msg(exc)}", digest
        )
    if not novelty:
        return GuardVerdict(True, Status.PROPOSED, "ok", digest)
    if all(normalized_hash(repo.read_file(p, EDITABLE)) == digest for p in parents):
        return refuse(
            "no-op: train.py is the same as its parent's once comments and blank lines are ignored",
            digest,
        )
    if digest in known_diffs:
        return refuse("duplicate: this train.py (normalised) has already been run", digest)
    return GuardVerdict(True, Status.PROPOSED, "ok", digest)


def _msg(exc: BaseException) -> str:
    msg = getattr(exc, "msg", None) or str(exc)
    return msg.splitlines()[0] if msg else exc.__class__.__name__


# ---- credentials ---------------------------------------------------------------------

# Names removed from a candidate's environment: anything that looks like a secret,
# and the variables of the common cloud / LLM / VCS clients.
SECRET_NAME = re.compile(
    r"(_API_KEY|APIKEY|_KEY$|_KEY_ID$|SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIAL|_AUTH|AUTH_|SESSION|COOKIE)",
    re.IGNORECASE,
)
SECRET_PREFIXES = (
    "AWS_",
    "AZURE_",
    "GOOGLE_",
    "GCLOUD_",
    "GCP_",
    "CLOUDSDK_",
    "OPENAI_",
    "ANTHROPIC_",
    "HF_",
    "HUGGING",
    "LITELLM_",
    "GROQ_",
    "MISTRAL_",
    "COHERE_",
    "GEMINI_",
    "TOGETHER_",
    "REPLICATE_",
    "DEEPSEEK_",
    "OPENROUTER_",
    "WANDB_",
    "GITHUB_",
    "GH_",
    "GITLAB_",
    "SSH_",
    "GPG_",
    "GNUPG",
    "NETRC",
    "DOCKER_",
    "KUBE",
    "RAY_",
    "SLURM_",
    "DATABASE_URL",
    "PIP_",
    "npm_",
    "NPM_",
    "TWINE_",
    "VAULT_",
    "DIGITALOCEAN_",
    "CF_",
    "CLOUDFLARE_",
)
# What a candidate may keep of the parent's environment (everything else is dropped,
# then the arena adds the contract's EVOLVE_* variables).
ALLOWED = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TERM", "PYTHONHASHSEED")


def is_secret_name(name: str) -> bool:
    upper = name.upper()
    return bool(SECRET_NAME.search(name)) or upper.startswith(
        tuple(p.upper() for p in SECRET_PREFIXES)
    )


def scrub_env(env: Mapping[str, str]) -> dict[str, str]:
    """A candidate's base environment: only the allow-listed variables of `env`, and
    never one whose name looks like a credential. HOME is set to a neutral value by
    the runner, so files such as ~/.netrc are out of reach too (see the sandbox)."""
    return {k: v for k, v in env.items() if k in ALLOWED and not is_secret_name(k)}
