"""`evolve`: the command line, a thin shell over the population library.

    evolve --generations N [--budget S] [--population P] [--run-dir DIR] [--resume]
           [--devices ...] [--model ...] [--ray [ADDRESS]] [--unconfined] [--simulate]
    evolve status | tui [--run-dir DIR]
    evolve report [--run-dir DIR] [--out DIR]
    evolve export --best|--candidate ID --format series|patch|file|report [--out PATH] [--run-dir DIR]
    evolve prepare [prepare.py's options]

Flow of a run: read program.md and the flags into the run's settings (population.settings;
a resumed run reads its own), check every prerequisite in seconds (population.preflight),
create the run directory whole, build the parts (store, experiment repository, arena,
proposer, the embedded model with its log in the run's logs/), hand them to
`GenerationLoop`, and narrate (population.narrate): what it is doing, the current step's
progress with an estimate, and a closing summary in words (population.report). Ctrl-C
or SIGTERM stops it within seconds, cleanly; `--resume` goes on. Named errors from the
library become one line on stderr and exit code 1; usage errors exit 2. Text written by
a candidate or an LLM is shown only through population.display.

What it does not do: decide anything about the search; every rule lives in the library.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from arena.errors import EvolveError
from population.display import one_line
from population.narrate import Narrator
from population.program import ProgramConfig, parse_program
from population.rundirs import DEFAULT_RUNS, latest_run_dir
from population.settings import (
    RunSettings,
    new_settings,
    program_fields,
    resume_settings,
    stored_settings,
)
from population.store import Store, store_path

log = logging.getLogger(__name__)

SUBCOMMANDS = ("status", "report", "export", "prepare", "tui")
SIM_PERSONAS = ["explorer", "tuner"]


class CLIError(EvolveError):
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


# -- the run ----------------------------------------------------------------------------------


def _add_run_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--generations", type=int, help="generations to run (overrides program.md's stop.generations; "
                   "with --resume it may move the run's stopping point)")
    p.add_argument("--budget", type=float, help="training seconds per run (overrides budget_s)")
    p.add_argument("--population", type=int, help="children per generation")
    p.add_argument("--run-dir", type=Path, help="run directory (default runs/<date-time>; with --resume the newest)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --run-dir with the settings it started with")
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
    p.add_argument("--unconfined", action="store_true",
                   help="accept running candidates without bubblewrap when it is missing (no network or "
                        "file isolation: only for code you trust)")
    p.add_argument("--simulate", action="store_true",
                   help="no training: a simulated arena scores knob constants on a noisy synthetic landscape "
                        "(a quick look at the search, in seconds)")
    p.add_argument("--sim-noise", type=float, help="simulated val_bpb noise std (--simulate; default 0.01)")
    p.add_argument("--sim-run-seconds", type=float, help="simulated run time (--simulate; default 0.05)")
    p.add_argument("--sim-slots", type=int, help="simulated device slots (--simulate; default 2)")
    p.add_argument("--sim-propose-seconds", type=float,
                   help="seconds each simulated proposal takes, as an LLM call would (--simulate; default 0)")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the closing summary")
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")


def _program_text(path: Path | None) -> tuple[str, str]:
    if path is None:
        return default_program_md(), "program.md"
    try:
        return path.read_text(encoding="utf-8"), str(path)
    except FileNotFoundError:
        raise CLIError(f"--program {path}: no such file; pass the path of an existing program.md") from None
    except OSError as exc:
        raise CLIError(f"--program {path}: cannot read it ({exc.strerror})") from None


def _data_dir(args: argparse.Namespace) -> Path:
    if args.data_dir:
        return Path(args.data_dir).resolve()
    if os.environ.get("EVOLVE_DATA"):
        return Path(os.environ["EVOLVE_DATA"]).resolve()
    import prepare

    return Path(prepare.default_data_dir()).resolve()


@dataclass(frozen=True)
class OpenedRun:
    run_dir: Path
    repo: Any
    store: Store
    settings: RunSettings
    config: ProgramConfig
    preflight: Any  # population.preflight.Preflight for a real run, None when simulated
    resumed: bool


def _preflight(settings: RunSettings, cfg: ProgramConfig, run_dir: Path, out: Narrator) -> Any:
    from population.preflight import check_all

    out.say("checking prerequisites (data, devices, disk, model, sandbox)")
    pre = check_all(Path(settings.data_dir or ""), cfg.devices, settings.unconfined, cfg.personas_config(),
                    run_dir, executor_slots=settings.ray in (None, "local"), local_model=cfg.local_model)
    for line in pre.lines:
        out.say(f"  ok  {line}")
    return pre


def _start_new(args: argparse.Namespace, out: Narrator) -> OpenedRun:
    run_dir = args.run_dir or DEFAULT_RUNS / time.strftime("%Y%m%d-%H%M%S")
    if store_path(run_dir).exists() or (run_dir / ".git").exists():
        raise CLIError(f"{run_dir} already holds a run; add --resume to continue it")
    text, source = _program_text(args.program)
    settings, cfg = new_settings(args, text, source)
    pre = None
    if settings.mode == "real":
        settings = dataclasses.replace(settings, data_dir=str(_data_dir(args)))
        pre = _preflight(settings, cfg, run_dir, out)  # a missing prerequisite stops here, before anything exists
    repo = _create_run(run_dir, _train_py(settings.mode), text, settings)
    return OpenedRun(run_dir, repo, Store.open(store_path(run_dir)), settings, cfg, pre, resumed=False)


def _open_for_resume(args: argparse.Namespace, out: Narrator) -> OpenedRun:
    from arena.repo import ExperimentRepo

    run_dir = args.run_dir or latest_run_dir()
    if not run_dir.exists():
        raise CLIError(f"--resume: {run_dir} does not exist; to start a new run there, drop --resume")
    if not store_path(run_dir).exists() or not (run_dir / ".git").exists():
        raise CLIError(f"--resume: {run_dir} holds no run (no {store_path(run_dir).name}); "
                       "to start a new run, drop --resume and choose a new --run-dir")
    repo = ExperimentRepo.open(run_dir)
    store = Store.open(store_path(run_dir))
    try:
        program_file = run_dir / "program.md"
        text = program_file.read_text(encoding="utf-8")
        settings, changed = resume_settings(stored_settings(store, text, str(program_file)), args)
        cfg = settings.config(parse_program(text, str(program_file)).prose)
        if settings.mode == "real" and settings.data_dir is None:  # a run from before settings were kept
            settings = dataclasses.replace(settings, data_dir=str(_data_dir(args)))
            store.set_run_settings(settings.as_store())
        if changed:
            store.set_run_settings({"program": settings.program, "simulate": settings.simulate})
            out.say("resuming with " + ", ".join(changed))
        pre = _preflight(settings, cfg, run_dir, out) if settings.mode == "real" else None
    except BaseException:
        store.close()
        raise
    return OpenedRun(run_dir, repo, store, settings, cfg, pre, resumed=True)


def cmd_run(args: argparse.Namespace) -> int:
    """Start a run, or continue one (--resume) with the settings it started with. A run
    directory appears whole: its git repository and its store (holding the settings)
    are built beside it and renamed into place, so a kill at any moment leaves either
    nothing or a run that --resume continues."""
    out = Narrator(quiet=args.quiet)
    run = _open_for_resume(args, out) if args.resume else _start_new(args, out)
    store = run.store
    with contextlib.ExitStack() as stack:
        stack.callback(store.close)
        stack.callback(out.close)
        session = store.start_session(sys.argv, program_fields(run.config))
        outcome = "error"
        try:
            outcome = _run(run, stack, out)
        except KeyboardInterrupt:
            outcome = "interrupted"
            store.add_event("interrupted", "stopped by the user (Ctrl-C or SIGTERM); continue with --resume")
            raise
        except Exception as exc:  # recorded for status, report and the TUI, then shown by main()
            outcome = f"error: {one_line(exc)[:300]}"
            store.add_event("fatal", f"the run stopped: {one_line(exc)}")
            raise
        finally:
            store.end_session(session, outcome)
        out.close()
        from population.report import summary_text

        print(summary_text(store, run.run_dir), flush=True)
    return 0


def _create_run(run_dir: Path, train_py: str, program_md: str, settings: RunSettings) -> Any:
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
    with open(tmp / ".git" / "info" / "exclude", "a", encoding="utf-8") as f:
        f.write("/report/\n")  # evolve report's files live beside the run, outside its history
    with Store.open(store_path(tmp)) as store:
        store.set_run_settings(settings.as_store())
    if run_dir.exists():
        run_dir.rmdir()
    os.rename(tmp, run_dir)
    return ExperimentRepo.open(run_dir)


def _train_py(mode: str) -> str:
    if mode == "simulate":
        from population.simulated import SIM_TRAIN_PY

        return SIM_TRAIN_PY
    return _module_file("train_template").read_text(encoding="utf-8")


def _plan_text(cfg: ProgramConfig, slots: int, device: str) -> str:
    return (f"plan: generation 0 trains the unmodified train.py on {cfg.root_seeds} seeds (their spread is "
            f"the noise floor); then {cfg.generations} generation(s) of {cfg.population} children, each trained "
            f"{cfg.budget_s:g} s on {cfg.initial_seeds} seed(s) beside its parent on the same seeds (up to "
            f"{cfg.max_seeds} while it still looks better); a child is kept only when a paired test says it "
            f"beats its parent. {slots} {device} slot(s).")


def _run(run: OpenedRun, stack: contextlib.ExitStack, out: Narrator) -> str:
    from population.loop import GenerationLoop

    cfg, store, repo, settings = run.config, run.store, run.repo, run.settings
    verb = "resuming" if run.resumed else "starting"
    if settings.mode == "simulate":
        from population.simulated import KnobProposer, Landscape, SimulatedArena

        sim = settings.simulate
        arena = SimulatedArena(lambda c: repo.read_file(c, "train.py"), slots=int(sim["slots"]),
                               landscape=Landscape(sigma=float(sim["noise"])),
                               run_seconds=float(sim["run_seconds"]))
        stack.callback(arena.close)
        personas = sorted(cfg.personas) or SIM_PERSONAS
        out.say(f"{verb} simulated run {repo.run_dir} (no training: synthetic scores of the knob constants)")
        proposer = KnobProposer(delay_s=float(sim["propose_seconds"]))
        loop = GenerationLoop(store, repo, arena, proposer, cfg, personas, slots=arena.slots,
                              on_event=out.say)
        slots, device = arena.slots, "simulated"
    else:
        personas = _real_personas(cfg)
        arena, slots = _real_arena(settings, repo, run.preflight, stack)
        device = ("Ray cluster" if settings.ray not in (None, "local") else
                  "GPU" if any(getattr(s, "device_type", "") == "cuda" for s in run.preflight.slots) else "CPU")
        out.say(f"{verb} run {repo.run_dir}")
        loop = GenerationLoop(store, repo, arena, None, cfg, sorted(personas), slots=slots,  # type: ignore[arg-type]
                              on_event=out.say, preferences={n: p.prefers for n, p in personas.items()},
                              crossover_personas={n for n, p in personas.items() if p.crossover},
                              weights={n: p.weight for n, p in personas.items()})
        from arena.preflight import Preflight

        preflight = Preflight(repo.read_file(repo.root_commit, "prepare.py"), run.preflight.data_dir)
        loop.proposer = _real_proposer(cfg, loop, store, stack, out, repo.run_dir, checks=[preflight])
    out.say(_plan_text(cfg, slots, device))
    out.watch(store_path(repo.run_dir), cfg.budget_s, slots, cfg.population, cfg.initial_seeds,
              cfg.root_seeds, cfg.generations)
    outcome = loop.run()
    return outcome.stop_reason or "stopped"


def _real_arena(settings: RunSettings, repo: Any, pre: Any, stack: contextlib.ExitStack) -> tuple[Any, int]:
    from arena.local import LocalArena

    try:
        if settings.ray:
            return _ray_arena(settings.ray, repo, pre.data_dir, pre.slots, stack)
        arena = LocalArena(repo, pre.data_dir, pre.slots)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    stack.callback(arena.close)
    return arena, len(pre.slots)


def _ray_arena(address: str, repo: Any, data_dir: Path, slots: list[Any],
               stack: contextlib.ExitStack) -> tuple[Any, int]:
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
    else:
        ray.init(address=address, log_to_driver=False)
    stack.callback(ray.shutdown)  # explicitly: an interrupted evolve ends without atexit handlers
    arena = RayArena(repo, data_dir, slots if address == "local" else None)
    stack.callback(arena.close)
    return arena, len(arena.slots)


def _real_personas(cfg: ProgramConfig) -> dict[str, Any]:
    try:
        from agents.personas import load_personas
    except ImportError as exc:
        raise CLIError(f"the agents are not available ({exc}); use --simulate") from None
    return load_personas(cfg.personas_config())


def _real_proposer(cfg: ProgramConfig, loop: Any, store: Store, stack: contextlib.ExitStack, out: Narrator,
                   run_dir: Path, checks: list[Any] | None = None) -> Any:
    import agents

    pcfg = cfg.personas_config()
    embedded = None
    if agents.needs_embedded_model(pcfg):
        from agents.local_model import LOCAL_MODEL_CHOICES, EmbeddedModel

        log_path = run_dir / "logs" / "llm-server.log"
        out.say(f"starting the embedded local model ({cfg.local_model}; no --model given; its log: {log_path})")
        t0 = time.monotonic()
        embedded = stack.enter_context(EmbeddedModel(LOCAL_MODEL_CHOICES[cfg.local_model], log_path=log_path))
        out.say(f"  the embedded model answers at {embedded.api_base} (ready in {time.monotonic() - t0:.0f} s)")
    return agents.build_proposer(pcfg, loop.on_llm_call, cfg.max_cost_usd, embedded=embedded,
                                 spent_usd=store.total_cost(), checks=checks or [])


# -- the read-only commands ---------------------------------------------------------------------


def _reader(run_dir: Path | None) -> tuple[Path, Store]:
    run_dir = run_dir or latest_run_dir()
    if not store_path(run_dir).exists():
        raise CLIError(f"no run in {run_dir} (no {store_path(run_dir).name}); start one with `evolve`, "
                       "or pass --run-dir DIR of an existing run")
    return run_dir, Store.open(store_path(run_dir), readonly=True)


def cmd_status(args: argparse.Namespace) -> int:
    """Where the run stands now (alive? which generation? what is running?)."""
    from population.report import status_text

    run_dir, store = _reader(args.run_dir)
    with store:
        print(f"run {run_dir}")
        print(status_text(store))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """What the run found: the summary in words, and the report files (results.tsv,
    progress.png, pareto.png, report.md)."""
    from population import memory
    from population.display import clean
    from population.report import summary_text, write_report

    run_dir, store = _reader(args.run_dir)
    with store:
        files = write_report(store, run_dir, args.out or run_dir / "report")
        print(summary_text(store, run_dir))
        print("\nresearch memory (what was tried, grouped by idea):\n" + clean(memory.for_run(run_dir, store)))
    print(f"\nreport: {files.markdown}\n  {files.results_tsv}\n  {files.progress_png}\n  {files.pareto_png}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from population.export import export, safe_for_terminal

    run_dir, store = _reader(args.run_dir)
    with store:
        cid, written = export(run_dir, store, None if args.best else args.candidate, args.format, args.out)
    if isinstance(written, Path):
        print(f"exported {cid} as {args.format}: {written}", file=sys.stderr)
    elif sys.stdout.isatty() and not safe_for_terminal(written):
        raise CLIError(f"the export of {cid} holds control characters that a terminal would obey: "
                       "write it to a file with --out PATH")
    else:
        sys.stdout.write(written)
    return 0


def cmd_tui(args: argparse.Namespace) -> int:
    from tui.app import run as tui_run

    run_dir = args.run_dir or latest_run_dir()
    if not store_path(run_dir).exists():
        raise CLIError(f"no run in {run_dir} yet: start one with `evolve` (the TUI watches it live), "
                       "or pass --run-dir DIR")
    return int(tui_run(run_dir) or 0)


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
    for name, helptext in (("status", ("where the run stands now: alive or not, the generation, runs in "
                                      "flight, the archive, the latest events (read-only)")),
                           ("report", ("what the run found: a summary in words, and results.tsv, progress.png, "
                                      "pareto.png and report.md in RUN_DIR/report (or --out)")),
                           ("tui", "the live terminal view")):
        sp = subs.add_parser(name, help=helptext, description=helptext)
        sp.add_argument("--run-dir", type=Path, help="run directory (default: the newest under runs/)")
        if name == "report":
            sp.add_argument("--out", type=Path, help="directory for the report files (default RUN_DIR/report)")
    ex = subs.add_parser("export", help="export a lineage", description="export a candidate's lineage")
    which = ex.add_mutually_exclusive_group(required=True)
    which.add_argument("--best", action="store_true", help="the archive member with the lowest val_bpb")
    which.add_argument("--candidate", help="a candidate id (see evolve status)")
    ex.add_argument("--format", choices=["series", "patch", "file", "report"], required=True,
                    help="series: an mbox for `git am` on a clone of this project (train.py becomes "
                         "train_template.py); patch: one patch for `git apply`; file: train.py itself; "
                         "report: evolve report's files, focused on this lineage")
    ex.add_argument("--out", type=Path, help="file to write (report: a directory); default: stdout "
                    "(report: RUN_DIR/report)")
    ex.add_argument("--run-dir", type=Path, help="run directory (default: the newest under runs/)")
    subs.add_parser("prepare", help="build the data cache (same as python prepare.py)", add_help=False)
    return run, sub


def main(argv: list[str] | None = None) -> int:
    """The `evolve` command. An interrupted run (Ctrl-C, SIGTERM) stops its runs, removes
    its temporary files, records where it stood and exits at once, even when a proposer
    thread still waits on an LLM reply nobody needs any more (see `_exit_now`)."""
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
    if handler is cmd_run:
        signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        code = handler(args)
    except EvolveError as exc:
        print(f"evolve: error: {one_line(exc)}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        print("evolve: interrupted; runs stopped and temporary files removed; continue with "
              "`evolve --resume" + (f" --run-dir {args.run_dir}`" if getattr(args, "run_dir", None) else "`"),
              file=sys.stderr)
        code = 130
    if handler is cmd_run:
        _exit_now(code)
    return code


def _exit_now(code: int) -> None:
    """Leave without waiting for threads that still run: a proposer thread blocked on an
    LLM reply (its HTTP call can take minutes) would otherwise hold the interpreter at
    exit. Everything of value is written by now: the store is closed, the arena and the
    embedded model are stopped, their temporary directories removed."""
    lingering = [t.name for t in threading.enumerate()
                 if t is not threading.main_thread() and t.is_alive() and not t.daemon]
    if lingering:
        log.info("exiting without waiting for %s", ", ".join(lingering))
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)


_signals_seen = 0


def _interrupt(signum: int, frame: object) -> None:
    """First Ctrl-C or SIGTERM: stop (KeyboardInterrupt unwinds the run, which cleans up).
    A second one while cleaning up only says so; a third leaves at once."""
    global _signals_seen
    _signals_seen += 1
    if _signals_seen == 1:
        raise KeyboardInterrupt
    if _signals_seen == 2:
        print("evolve: stopping runs and removing temporary files, a few seconds (again to quit now)",
              file=sys.stderr, flush=True)
        return
    os._exit(130)


if __name__ == "__main__":
    sys.exit(main())
