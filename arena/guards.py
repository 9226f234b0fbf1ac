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
- `train.py` does not seed a random generator with a fixed value (`fixed_seeds`): the
  arena runs a candidate on several seeds to measure its noise, and a candidate that
  pins its own seed (a lucky one, say) would look noise-free and better than it is;
- the normalised diff is not empty (a no-op) and not one already seen (a duplicate).
After the runs, `seed_insensitive` flags a candidate whose val_bpb does not change
across seeds (a seed override the static check missed, e.g. through `getattr`).

What it does not do: judge whether the change is a good idea, or look for hostile
code (that is the sandbox's and the evaluator's job).
"""

from __future__ import annotations

import ast
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

    for changed in repo.changed_files(commit).values():
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
    pinned = fixed_seeds(source)
    if pinned:
        return refuse(
            f"train.py seeds a random generator with a fixed value ({pinned[0]}); the arena "
            "varies the seed to measure noise: derive every seed from prepare.runtime().seed",
            digest,
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


# ---- seeds ---------------------------------------------------------------------------

# Calls that seed a generator (torch, numpy, random, the harness's TrainLoader...): a
# positional seed argument or a `seed=` keyword.
SEEDING_CALLS = frozenset(
    {
        "manual_seed",
        "manual_seed_all",
        "seed",
        "seed_everything",
        "set_seed",
        "default_rng",
        "RandomState",
        "Random",
        "SeedSequence",
        "PCG64",
        "PCG64DXSM",
        "MT19937",
        "Philox",
        "SFC64",
    }
)
# builtins that give a constant from constants (not `hash`: PYTHONHASHSEED is the seed)
PURE_BUILTINS = frozenset({"int", "float", "abs", "round", "min", "max", "pow", "len", "str"})
SEED_DIFFERS_BELOW = 1e-12  # relative: honest runs on different seeds never agree this closely


def fixed_seeds(source: str) -> list[str]:
    """Each place `source` seeds a generator with a value that cannot depend on the
    harness's seed: `torch.manual_seed(1234)`, `SEED = 7` ... `np.random.seed(SEED)`,
    `TrainLoader(..., seed=0)`. A seed computed from anything not constant (the
    runtime's `rt.seed`, a parameter, an environment variable) passes. Static, so a
    determined candidate can hide it (`getattr`); `seed_insensitive` is the backstop."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    const = _constant_names(tree)
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        args = [k.value for k in node.keywords if k.arg == "seed"]
        if name in SEEDING_CALLS:
            args += node.args[:1]
        if any(_is_constant(a, const) for a in args):
            found.append(f"{ast.unparse(node)[:80]}, line {node.lineno}")
    return found


def _constant_names(tree: ast.AST) -> set[str]:
    """Names whose every binding is `NAME = <constant expression>` (to a fixed point);
    any other binding (a parameter, unpacking, a loop, `+=`, an import) makes a name
    not constant."""
    values: dict[str, list[ast.expr | None]] = {}
    simple: set[int] = set()
    for node in ast.walk(tree):
        targets = node.targets if isinstance(node, ast.Assign) else []
        if isinstance(node, ast.AnnAssign) and node.value is not None:
            targets = [node.target]
        for target in targets:
            if isinstance(target, ast.Name):
                values.setdefault(target.id, []).append(node.value)
                simple.add(id(target))
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Name)
            and isinstance(node.ctx, ast.Store)
            and id(node) not in simple
        ):
            values.setdefault(node.id, []).append(None)
        elif isinstance(node, ast.arg):
            values.setdefault(node.arg, []).append(None)
        elif isinstance(node, ast.alias):
            values.setdefault((node.asname or node.name).split(".")[0], []).append(None)
    const = set(values)
    changed = True
    while changed:
        changed = False
        for name in list(const):
            if not all(v is not None and _is_constant(v, const) for v in values[name]):
                const.discard(name)
                changed = True
    return const


def _is_constant(node: ast.expr, const: set[str]) -> bool:
    if isinstance(node, ast.Constant):
        return True
    if isinstance(node, ast.Name):
        return node.id in const
    if isinstance(node, ast.Call):
        return (
            isinstance(node.func, ast.Name)
            and node.func.id in PURE_BUILTINS
            and not node.keywords
            and all(_is_constant(a, const) for a in node.args)
        )
    if isinstance(node, ast.BinOp | ast.UnaryOp | ast.BoolOp | ast.Compare | ast.IfExp):
        return all(
            _is_constant(c, const) for c in ast.iter_child_nodes(node) if isinstance(c, ast.expr)
        )
    if isinstance(node, ast.Tuple | ast.List | ast.JoinedStr | ast.FormattedValue):
        return all(
            _is_constant(c, const) for c in ast.iter_child_nodes(node) if isinstance(c, ast.expr)
        )
    return False


def seed_insensitive(val_bpb_by_seed: Mapping[int, float]) -> str | None:
    """A message when a candidate measured on two or more different seeds got the
    same val_bpb on all of them (to a relative 1e-12): it ignores the harness's seed.
    None otherwise."""
    values = [v for v in val_bpb_by_seed.values() if v is not None]
    if len(values) < 2:
        return None
    low, high = min(values), max(values)
    if high - low > SEED_DIFFERS_BELOW * max(1.0, abs(high)):
        return None
    return (
        f"val_bpb {high:.6f} on each of seeds {sorted(val_bpb_by_seed)}: the results do not "
        "change with the seed, so train.py ignores the harness's seed (a seed override)"
    )


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
