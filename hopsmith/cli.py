"""The `hopsmith` command.

    hopsmith eval --data musique --limit 20 --out runs/base       run and score the search agent
    hopsmith eval --model openai:M@http://host:8000/v1 --extractor gemini:gemini-2.5-flash   any backend in any role
    hopsmith eval --env enterprise --data enterprise --limit 1    another environment (hopsmith.envs.ENVS)
    hopsmith matrix --orchestrators A,B --extractors X,Y          the LoRA multi-hop recipe's orchestrator x extractor table
    hopsmith pipeline --out runs/ladder                           traces -> judge -> SFT -> base and tuned eval
    hopsmith traces --root runs/ladder                            one stage of the ladder (also judge, sft)
    hopsmith bench-extraction --data musique --limit 50           the extractor alone, on gold paragraphs
    hopsmith check-leakage --data musique --adapter runs/ladder/sft   train/eval overlap of a split and an adapter
    hopsmith prepare-model                                        convert the embedded model once
    hopsmith cost --estimate                                      what the LoRA multi-hop recipe costs in the cloud
    hopsmith cost runs/ladder                                     what a cloud run cost
    hopsmith report runs/ladder runs/other                        one HTML page: numbers, plots, traces
    hopsmith serve --adapter runs/ladder/sft                      the eval endpoint, locally (bearer token)
    hopsmith rft --adapter runs/ladder/sft --out runs/rft         learning from the model's own behaviour (also
                                                                  mine-pairs, simpo, grpo)

The stages are mounted from one table (`STAGES`: name -> config class -> run function -> default output);
every stage flag is a field of its config class, and its help is the field's comment. Every flag is also a
key of a TOML file given with `--config` (agent knobs flat or under `[agent]`); flags win over the file.
Every role's model (`--model`, `--extractor`, `--teacher`, `--judge`) is a backend spec
(`hopsmith.backends.factory`).
"""
from __future__ import annotations

import argparse
import errno
import importlib
import json
import sys
import typing
from dataclasses import MISSING, dataclass
from pathlib import Path
from typing import Callable

from .config import EvalConfig, build, flat_fields, knob_help, nested_fields

# The stages and the heavy libraries load when a command runs, not when the parser is built for `--help`:
# each command's module is imported by name from the table below.


@dataclass(frozen=True)
class StageCommand:
    """A subcommand that mounts a stage: `module.run_fn(config, out)`, its flags made from `config`'s fields."""

    name: str
    module: str  # importable module holding the config class and the run function
    config: str  # the config class's name in `module`
    run_fn: str  # the function called with (config, out)
    help: str
    out: str  # the default output directory ("{data}" is filled from the config); "" for none
    out_flag: str = "--out"  # --root for the stages that write into a run root
    aliases: tuple[tuple[str, str], ...] = ()  # (field, extra flag)
    quiet: bool = False  # a --quiet flag (no progress bar)

    def load(self):
        mod = importlib.import_module(self.module)
        return mod, getattr(mod, self.config)


STAGES = (
    StageCommand("eval", "stages.evaluate", "EvalConfig", "run", "run the search agent on a question set and score it",
                 "runs/eval-{data}", quiet=True),
    StageCommand("matrix", "stages.matrix", "MatrixConfig", "run",
                 "the LoRA multi-hop recipe's table: every orchestrator with every extractor, paired against the "
                 "diagonal", "runs/matrix", quiet=True),
    StageCommand("pipeline", "stages.pipeline", "PipelineConfig", "run",
                 "the ladder: traces, judge, LoRA SFT, base and tuned eval, comparison", "runs/ladder",
                 aliases=(("with_stages", "--with"),)),
    StageCommand("traces", "stages.traces", "TracesConfig", "run",
                 "write synthetic (or teacher) agent traces for the train split", "runs/ladder", out_flag="--root"),
    StageCommand("judge", "stages.judge", "JudgeConfig", "run",
                 "filter traces with rule checks and an optional LLM judge", "runs/ladder", out_flag="--root"),
    StageCommand("sft", "stages.sft", "SFTConfig", "run", "LoRA SFT on judged traces", "runs/sft"),
    StageCommand("serve", "stages.serve", "ServeConfig", "serve_forever",
                 "serve the agent over HTTP (/answer, /evaluate) behind a bearer token", ""),
    StageCommand("mine-pairs", "stages.preference", "MineConfig", "mine",
                 "preference pairs: the model's failures vs correct traces of the same questions", "runs/pairs"),
    StageCommand("simpo", "stages.preference", "PreferenceConfig", "train",
                 "SimPO (or --preset dpo) on the pairs, continuing an SFT adapter", "runs/simpo"),
    StageCommand("rft", "stages.rft", "RFTConfig", "run",
                 "rejection fine-tuning: sample, keep the judged-correct, SFT", "runs/rft"),
    StageCommand("grpo", "stages.grpo", "GRPOConfig", "run", "GRPO with the search tools on a LoRA adapter",
                 "runs/grpo"),
)


def knob_default(cls, name: str):
    """A flat knob's default: the outer field's, or the nested config's as the outer field builds it."""
    holder, f = flat_fields(cls)[name]
    if holder is None:
        return f.default if f.default is not MISSING else f.default_factory()
    outer = next(g for g in cls.__dataclass_fields__.values() if g.name == holder)
    return getattr(outer.default_factory(), name)


def add_config_flags(p: argparse.ArgumentParser, cls, aliases: dict[str, str] | None = None) -> None:
    """One flag per knob of `cls`, nested agent knobs included (`max_turns` -> `--max-turns`), plus
    `--config FILE.toml`. Each flag's help is the field's comment in the config class (`knob_help`), so
    `--help` and the saved config.json describe the same knobs."""
    p.add_argument("--config", help=f"TOML file with {cls.__name__} keys, flat or in tables (flags win over it)")
    # A knob named as one of `hopsmith eval`'s means the same (the matrix and the ladder pass them on to it).
    helps = {**knob_help(EvalConfig), **{k: v for k, v in knob_help(cls).items() if v}}
    nested = nested_fields(cls)
    # a renamed knob keeps its old flag too (`--probe-turns` is simpo's `--max-turns`)
    old = {new: old for f in cls.__dataclass_fields__.values() for old, new in f.metadata.get("renamed", {}).items()}
    aliases = {**{new: "--" + o.replace("_", "-") for new, o in old.items()}, **(aliases or {})}
    for name, (holder, _) in flat_fields(cls).items():
        kind = typing.get_type_hints(nested[holder] if holder else cls)[name]
        flags = ["--" + name.replace("_", "-")] + ([aliases[name]] if name in aliases else [])
        text = f"{helps.get(name) or name.replace('_', ' ')} (default {knob_default(cls, name)!r})"
        text = text.replace("%", "%%")
        if kind in (bool, "bool", bool | None):
            p.add_argument(*flags, dest=name, default=None, action=argparse.BooleanOptionalAction, help=text)
        else:
            p.add_argument(*flags, dest=name, default=None, help=text)


def config_from_args(cls, args):
    keys = set(flat_fields(cls))
    return build(cls, file=args.config, **{k: v for k, v in vars(args).items() if k in keys})


def run_stage(stage: StageCommand, args) -> int:
    mod, cls = stage.load()
    cfg = config_from_args(cls, args)
    fn = getattr(mod, stage.run_fn)
    if not stage.out:
        fn(cfg)
        return 0
    given = getattr(args, stage.out_flag.lstrip("-"))
    out = Path(given or stage.out.format(data=str(getattr(cfg, "data", "")).replace("/", "_")))
    kw = {"progress": not args.quiet} if stage.quiet else {}
    announce = ANNOUNCE.get(stage.name)
    if announce:
        print(announce(cfg, out), file=sys.stderr)
    result = fn(cfg, out, **kw) if stage.name != "pipeline" else fn(cfg, out, log=lambda m: print(m, flush=True))
    SHOW.get(stage.name, _show_summary)(mod, cfg, out, result)
    return 0


# -- what each stage prints ------------------------------------------------------------------------------

ANNOUNCE: dict[str, Callable] = {
    "eval": lambda cfg, out: f"hopsmith eval: {cfg.data} (split {cfg.split}, limit {cfg.limit}) with "
                             f"{cfg.agent.model} ({cfg.agent.env}) -> {out}",
    "matrix": lambda cfg, out: f"hopsmith matrix: {len(cfg.rows)} orchestrator(s) x {len(cfg.cols)} extractor(s) on "
                               f"{cfg.data} (split {cfg.split}, limit {cfg.limit}) -> {out}",
}


def _show_eval(mod, cfg, out, metrics) -> None:
    print(mod.describe(cfg, metrics))
    print(f"\nwrote {out}/metrics.json, {out}/results.jsonl")


def _show_matrix(mod, cfg, out, summary) -> None:
    print(mod.format_matrix(summary))
    print(f"\nwrote {out}/matrix.json, {out}/matrix.txt, {out}/cells/")


def _show_sft(mod, cfg, out, summary) -> None:
    print(f"trained {summary['steps']} steps on {summary['traces']} traces in {summary['seconds']:.0f} s, "
          f"final loss {summary['train_loss']:.3f}; adapter in {out}")


def _show_judge(mod, cfg, out, summary) -> None:
    print(mod.describe(summary, out))


def _show_traces(mod, cfg, out, summary) -> None:
    print(json.dumps({k: v for k, v in summary.items() if k != "config"}, indent=1, default=str)[:4000])


def _show_summary(mod, cfg, out, summary) -> None:
    from .leakage import TRAINED_KEYS

    keep = {k: v for k, v in summary.items() if k not in (*TRAINED_KEYS, "config", "behaviour", "sft")}
    print(json.dumps(keep, indent=1, default=str)[:4000])
    print(f"wrote {out}")


SHOW: dict[str, Callable] = {"eval": _show_eval, "matrix": _show_matrix, "sft": _show_sft, "judge": _show_judge,
                             "traces": _show_traces, "pipeline": lambda *a: None}


def cmd_bench_extraction(args) -> int:
    from .backends.factory import make_backend
    from .ceiling import extraction_benchmark
    from .data import BUNDLED, load_questions
    from .io import write_json, write_jsonl
    from .tools.extract import Extractor

    split = args.split if args.data in BUNDLED and args.split != "all" else None
    questions = load_questions(args.data, limit=args.limit, split=split)
    extractor = Extractor(make_backend(args.model, role="extractor", check=True, adapter=args.adapter,
                                       batch_size=args.batch_size))
    result = extraction_benchmark(questions, extractor)
    s = result["summary"]
    for key, label in (("em", "EM"), ("f1", "F1"), ("acc", "cover-EM")):
        m = s[key]
        print(f"extraction {label:9s} {100 * m['mean']:5.1f}%  [{100 * m['lo']:5.1f}, {100 * m['hi']:5.1f}]  n={m['n']}")
    if args.out:
        write_jsonl(Path(args.out) / "extraction.jsonl", result["rows"])
        write_json(Path(args.out) / "extraction_summary.json", s)
    return 0


def cmd_check_leakage(args) -> int:
    from .data import BUNDLED, load_questions
    from .leakage import format_split_report, guard, leaks, split_report

    if args.adapter and not (Path(args.adapter) / "training.json").is_file():
        raise FileNotFoundError(f"--adapter {args.adapter}: no training.json there (not an adapter hopsmith trained)")
    names = [n.strip() for n in (args.data or ",".join(BUNDLED)).split(",") if n.strip()]
    sets = {name: load_questions(name) for name in names}
    found = False
    for name, questions in sets.items():
        report = split_report(questions, pool_size=args.pool_size)
        found |= leaks(report)
        print(format_split_report(name, report))
    if len(sets) > 1:  # the bundled sets are split as one: a train question of one set vs an eval one of another
        report = split_report([q for qs in sets.values() for q in qs], pool_size=args.pool_size)
        found |= leaks(report)
        print(format_split_report(" + ".join(sets), report))
    if args.adapter:
        # what `hopsmith eval` would evaluate: a bundled set's eval split, a file whole
        evals = [q for name, qs in sets.items() for q in qs if name not in BUNDLED or q.meta["split"] == "eval"]
        _, report = guard(evals, args.adapter, allow=True)
        found |= bool(report["count"])
        reasons = ", ".join(f"{k.replace('_', '-')} {v}" for k, v in report["by_reason"].items())
        print(f"{args.adapter}: {report['count']} of {len(evals)} questions to evaluate overlap its training set "
              f"({reasons})")
    print("leakage found" if found else "no leakage found")
    return 1 if found else 0


def cmd_prepare_model(args) -> int:
    import os

    from .models import download_model, resolve_model

    print(download_model(args.model, token=os.environ.get("HF_TOKEN")) if args.download else resolve_model(args.model))
    return 0


def cmd_cost(args) -> int:
    from .cost import CostError, Ledger, estimate_recipe, format_estimate, format_ledger, measured_priors

    if args.estimate:
        priors = None
        if args.from_run:
            src = Path(args.from_run)
            src = src / "cost.json" if src.is_dir() else src
            if not src.exists():
                raise FileNotFoundError(f"--from {args.from_run}: no cost ledger at {src}")
            priors = measured_priors(src)
        recipe = {k: v for k, v in {"traces": args.traces, "epochs": args.epochs, "eval_questions": args.eval_questions,
                                    "eval_shards": args.eval_shards, "sft_gpu": args.sft_gpu,
                                    "eval_gpu": args.eval_gpu}.items() if v is not None}
        for key, value in recipe.items():
            if isinstance(value, (int, float)) and not value > 0:  # also refuses nan
                raise CostError(f"--{key.replace('_', '-')} must be above 0, got {value}")
        est = estimate_recipe(recipe, priors)
        print(format_estimate(est))
        if args.json:
            print(json.dumps(est, indent=2))
        return 0
    if not args.run:
        raise CostError("give a run directory (holding cost.json) or --estimate")
    path = Path(args.run) / "cost.json" if Path(args.run).is_dir() else Path(args.run)
    if not path.exists():
        raise FileNotFoundError(f"no cost ledger at {path} (cloud entrypoints write runs/<run>/cost.json)")
    print(format_ledger(Ledger.open(path).summary()))
    return 0


def cmd_report(args) -> int:
    from .report import write_report

    path = write_report(args.runs, args.out)
    print(f"wrote {path}")
    return 0


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of every subcommand; given `command`, only that stage's flags are built (importing its stage
    module), so `hopsmith --help` and one command's run load nothing they do not use."""
    parser = argparse.ArgumentParser(prog="hopsmith", description="Train and evaluate small search agents.")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error, not one line")
    sub = parser.add_subparsers(dest="command", required=True)
    for stage in STAGES:
        p = sub.add_parser(stage.name, help=stage.help, description=stage.help)
        if command not in (None, stage.name):
            continue
        add_config_flags(p, stage.load()[1], dict(stage.aliases))
        if stage.out:
            where = "run root" if stage.out_flag == "--root" else "output directory"
            p.add_argument(stage.out_flag, help=f"{where} (default {stage.out.replace('{data}', '<data>')})")
        if stage.quiet:
            p.add_argument("--quiet", action="store_true", help="no progress bar")
        p.set_defaults(func=lambda args, stage=stage: run_stage(stage, args))
    add_tool_commands(sub)
    return parser


def add_tool_commands(sub) -> None:
    """The commands that are not stages: a benchmark, a check, the ledger, the report, the model cache."""
    p = sub.add_parser("bench-extraction", help="score the extractor on gold paragraphs and gold sub-questions")
    p.add_argument("--data", default="musique", help="bundled set name or a file in an original format")
    p.add_argument("--split", default="eval", help="bundled sets: eval | train | all")
    p.add_argument("--limit", type=int, default=50, help="the first N questions")
    p.add_argument("--model", default="embedded", help="the extractor: any backend spec")
    p.add_argument("--adapter", help="LoRA adapter directory on top of a local model")
    p.add_argument("--batch-size", type=int, default=16, help="extractions answered together")
    p.add_argument("--out", help="write extraction.jsonl and extraction_summary.json here")
    p.set_defaults(func=cmd_bench_extraction)

    p = sub.add_parser("check-leakage", help="overlap between the train and eval sides of a split (and an adapter)")
    p.add_argument("--data", help="bundled set names or files, comma-separated (default: every bundled set)")
    p.add_argument("--adapter", help="also count the eval questions that overlap this adapter's training set")
    p.add_argument("--pool-size", type=int, default=400, help="paragraphs in each question's pool, as eval builds it")
    p.set_defaults(func=cmd_check_leakage)

    p = sub.add_parser("cost", help="a cloud run's cost ledger, or an estimate of the LoRA multi-hop recipe")
    p.add_argument("run", nargs="?", help="run directory holding cost.json (or the file)")
    p.add_argument("--estimate", action="store_true", help="estimate a recipe instead (the LoRA multi-hop one by default)")
    p.add_argument("--from", dest="from_run", help="use the throughputs measured in this run's cost.json")
    p.add_argument("--traces", type=int, help="traces SFT trains on")
    p.add_argument("--epochs", type=float, help="SFT epochs")
    p.add_argument("--eval-questions", type=int, help="questions each eval runs")
    p.add_argument("--eval-shards", type=int, help="containers an eval is split over")
    p.add_argument("--sft-gpu", help="the GPU SFT rents (Modal's name, e.g. L4)")
    p.add_argument("--eval-gpu", help="the GPU eval rents (Modal's name, e.g. B200)")
    p.add_argument("--json", action="store_true", help="also print the estimate as JSON")
    p.set_defaults(func=cmd_cost)

    p = sub.add_parser("report", help="one self-contained HTML page: metrics, comparisons, curves, cost, traces")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories; the first is the baseline")
    p.add_argument("--out", help="the page to write (default RUN_DIR/report.html, or report-compare.html "
                                 "in the first RUN_DIR when given several)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("prepare-model", help="convert/locate (or --download) a model and print its directory")
    p.add_argument("--model", default="embedded", help="embedded, a model directory or a hub id")
    p.add_argument("--download", action="store_true",
                   help="fetch a hub model once into the model cache (HF_TOKEN from the environment for gated ones)")
    p.set_defaults(func=cmd_prepare_model)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), "")
    args = build_parser(command).parse_args(argv)
    try:
        return args.func(args)
    except Exception as exc:
        if getattr(args, "debug", False):
            raise
        return _one_line(exc)
    except KeyboardInterrupt:
        print("hopsmith: interrupted; finished episodes are saved, rerun the same command to resume", file=sys.stderr)
        return 130


# File-system failures a user causes (a path that is a file, missing, read-only, a full disk, a port in use).
_USER_ERRNOS = {errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.ENOENT, errno.EROFS,
                errno.ENOSPC, errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.ENAMETOOLONG}


def _one_line(exc: Exception) -> int:
    """The error boundary: a user-caused failure becomes one line and exit 2 (a backend that failed mid-run
    exit 1, finished work kept); anything else is a bug and keeps its traceback."""
    from .config import ConfigError, RunDirError
    from .data import DataError
    from .models import ModelError
    from .leakage import LeakageError
    from stages.judge import JudgeRunError
    from stages.preference import PreferenceError

    from .backends.remote import BackendError, BackendSetupError
    from .cost import BudgetExceeded, CostError
    from .report import ReportError
    from .runlock import RunLockError
    from .volumes import LayoutError

    try:
        raise exc
    except (ConfigError, DataError, ModelError, RunDirError, LeakageError, JudgeRunError, FileNotFoundError,
            CostError, BudgetExceeded, LayoutError, PreferenceError, ReportError, BackendSetupError, RunLockError) as exc:
        print(f"hopsmith: error: {exc}", file=sys.stderr)
        return 2
    except BackendError as exc:
        # A backend that passed its check and failed later (a server gone, retries used up): what finished is kept.
        print(f"hopsmith: error: {exc}; finished work is saved, rerun the same command to resume", file=sys.stderr)
        return 1
    except OSError as err:
        if err.errno not in _USER_ERRNOS:
            raise
        where = f": {err.filename}" if err.filename else ""
        print(f"hopsmith: error: {err.strerror or err}{where} (check the path or the port; --debug shows the traceback)",
              file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
