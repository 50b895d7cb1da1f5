"""The `hopsmith` command.

    hopsmith eval --data musique --limit 20 --out runs/base       run and score the search agent
    hopsmith eval --model openai:M@http://host:8000/v1 --extractor gemini:gemini-2.5-flash   any backend in any role
    hopsmith matrix --orchestrators A,B --extractors X,Y          seed 000's orchestrator x extractor table
    hopsmith pipeline --out runs/ladder                           base eval -> traces -> judge -> SFT -> tuned eval
    hopsmith traces | judge | sft ...                             one stage of the ladder
    hopsmith bench-extraction --data musique --limit 50           the extractor alone, on gold paragraphs
    hopsmith check-leakage [--data musique] [--adapter DIR]       train/eval overlap of a split (and an adapter)
    hopsmith prepare-model                                        convert the embedded model once
    hopsmith cost --estimate | hopsmith cost runs/ladder          what seed 000's recipe / a cloud run costs
    hopsmith report runs/ladder [runs/other ...]                  one HTML page: numbers, plots, traces
    hopsmith serve --adapter runs/ladder/sft                      the eval endpoint, locally (bearer token)
    hopsmith mine-pairs | simpo | rft | grpo ...                  learning from the model's own behaviour

Every flag of `eval` is also a key of a TOML file given with `--config`; flags win over the file. Every role's
model (`--model`, `--extractor`, `--teacher`, `--judge`) is a backend spec (`hopsmith.backends.factory`).
"""
from __future__ import annotations

import argparse
import dataclasses
import errno
import json
import sys
from pathlib import Path


def add_config_flags(p: argparse.ArgumentParser, cls, aliases: dict[str, str] | None = None) -> None:
    """One flag per config field (`max_turns` -> `--max-turns`), plus `--config FILE.toml`; `aliases`
    gives a field a second, shorter flag (`{"with_stages": "--with"}`)."""
    p.add_argument("--config", help=f"TOML file with {cls.__name__} keys (flags win over it)")
    for f in dataclasses.fields(cls):
        flags = ["--" + f.name.replace("_", "-")] + ([aliases[f.name]] if aliases and f.name in aliases else [])
        if f.type in ("bool", bool):
            p.add_argument(*flags, dest=f.name, default=None, action=argparse.BooleanOptionalAction,
                           help=f"(default {f.default})")
        else:
            p.add_argument(*flags, dest=f.name, default=None, help=f"(default {f.default!r})")


def config_from_args(cls, args):
    from .config import build

    keys = {f.name for f in dataclasses.fields(cls)}
    return build(cls, file=args.config, **{k: v for k, v in vars(args).items() if k in keys})


def cmd_eval(args) -> int:
    from stages import evaluate

    from .metrics import format_table

    from .config import EvalConfig

    cfg = config_from_args(EvalConfig, args)
    out = Path(args.out or f"runs/eval-{cfg.data.replace('/', '_')}")
    print(f"hopsmith eval: {cfg.data} (split {cfg.split}, limit {cfg.limit}) with {cfg.model} -> {out}", file=sys.stderr)
    metrics = evaluate.run(cfg, out, progress=not args.quiet)
    print(format_table(metrics))
    print(f"\nwrote {out}/metrics.json, {out}/results.jsonl")
    return 0


def cmd_matrix(args) -> int:
    from stages import matrix

    cfg = config_from_args(matrix.MatrixConfig, args)
    out = Path(args.out or "runs/matrix")
    print(f"hopsmith matrix: {len(cfg.rows)} orchestrator(s) x {len(cfg.cols)} extractor(s) on {cfg.data} "
          f"(split {cfg.split}, limit {cfg.limit}) -> {out}", file=sys.stderr)
    summary = matrix.run(cfg, out, progress=not args.quiet)
    print(matrix.format_matrix(summary))
    print(f"\nwrote {out}/matrix.json, {out}/matrix.txt, {out}/cells/")
    return 0


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


def cmd_sft(args) -> int:
    from stages import sft

    cfg = config_from_args(sft.SFTConfig, args)
    out = Path(args.out or "runs/sft")
    summary = sft.run(cfg, out)
    print(f"trained {summary['steps']} steps on {summary['traces']} traces in {summary['seconds']:.0f} s, "
          f"final loss {summary['train_loss']:.3f}; adapter in {out}")
    return 0


def cmd_judge(args) -> int:
    from stages import judge

    summary = judge.run(config_from_args(judge.JudgeConfig, args), Path(args.root))
    print(judge.describe(summary, args.root))
    return 0


def cmd_traces(args) -> int:
    from stages import traces

    summary = traces.run(config_from_args(traces.TracesConfig, args), Path(args.root))
    print(json.dumps({k: v for k, v in summary.items() if k != "config"}, indent=1, default=str)[:4000])
    return 0


def cmd_pipeline(args) -> int:
    from stages import pipeline

    cfg = config_from_args(pipeline.PipelineConfig, args)
    pipeline.run(cfg, Path(args.out or "runs/ladder"), log=lambda m: print(m, flush=True))
    return 0


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


def cmd_serve(args) -> int:
    from stages import serve

    cfg = config_from_args(serve.ServeConfig, args)
    serve.serve_forever(cfg)
    return 0


def _stage_cmd(module: str, fn: str, cls: str, default_out: str):
    def cmd(args) -> int:
        import importlib

        mod = importlib.import_module(f"stages.{module}")
        cfg = config_from_args(getattr(mod, cls), args)
        out = Path(args.out or default_out)
        summary = getattr(mod, fn)(cfg, out)
        from .leakage import TRAINED_KEYS

        keep = {k: v for k, v in summary.items() if k not in (*TRAINED_KEYS, "config", "behaviour", "sft")}
        print(json.dumps(keep, indent=1, default=str)[:4000])
        print(f"wrote {out}")
        return 0
    return cmd


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hopsmith", description="Train and evaluate small search agents.")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error, not one line")
    sub = parser.add_subparsers(dest="command", required=True)

    from .config import EvalConfig
    from stages.judge import JudgeConfig
    from stages.pipeline import PipelineConfig
    from stages.sft import SFTConfig
    from stages.traces import TracesConfig

    p = sub.add_parser("eval", help="run the search agent on a question set and score it")
    add_config_flags(p, EvalConfig)
    p.add_argument("--out", help="run directory (default runs/eval-<data>)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_eval)

    from stages.matrix import MatrixConfig

    p = sub.add_parser("matrix", help="seed 000's table: every orchestrator with every extractor, paired against the diagonal")
    add_config_flags(p, MatrixConfig)
    p.add_argument("--out", help="run root (default runs/matrix)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_matrix)

    p = sub.add_parser("pipeline", help="the ladder: base eval, traces, judge, LoRA SFT, tuned eval, comparison")
    add_config_flags(p, PipelineConfig, aliases={"with_stages": "--with"})
    p.add_argument("--out", help="run root (default runs/ladder)")
    p.set_defaults(func=cmd_pipeline)

    p = sub.add_parser("traces", help="write synthetic (or teacher) agent traces for the train split")
    add_config_flags(p, TracesConfig)
    p.add_argument("--root", default="runs/ladder", help="run root; traces go to ROOT/traces/")
    p.set_defaults(func=cmd_traces)

    p = sub.add_parser("judge", help="filter traces with rule checks and an optional LLM judge")
    add_config_flags(p, JudgeConfig)
    p.add_argument("--root", default="runs/ladder", help="run root holding traces/; writes kept.jsonl there")
    p.set_defaults(func=cmd_judge)

    p = sub.add_parser("sft", help="LoRA SFT on judged traces")
    add_config_flags(p, SFTConfig)
    p.add_argument("--out", help="adapter directory (default runs/sft)")
    p.set_defaults(func=cmd_sft)

    p = sub.add_parser("bench-extraction", help="score the extractor on gold paragraphs and gold sub-questions")
    p.add_argument("--data", default="musique")
    p.add_argument("--split", default="eval")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--model", default="embedded", help="the extractor: any backend spec")
    p.add_argument("--adapter")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--out")
    p.set_defaults(func=cmd_bench_extraction)

    p = sub.add_parser("check-leakage", help="overlap between the train and eval sides of a split (and an adapter)")
    p.add_argument("--data", help="bundled set names or files, comma-separated (default: every bundled set)")
    p.add_argument("--adapter", help="also count the eval questions that overlap this adapter's training set")
    p.add_argument("--pool-size", type=int, default=400)
    p.set_defaults(func=cmd_check_leakage)

    p = sub.add_parser("cost", help="a cloud run's cost ledger, or an estimate of seed 000's recipe")
    p.add_argument("run", nargs="?", help="run directory holding cost.json (or the file)")
    p.add_argument("--estimate", action="store_true", help="estimate a recipe instead (seed 000's by default)")
    p.add_argument("--from", dest="from_run", help="use the throughputs measured in this run's cost.json")
    p.add_argument("--traces", type=int)
    p.add_argument("--epochs", type=float)
    p.add_argument("--eval-questions", type=int)
    p.add_argument("--eval-shards", type=int)
    p.add_argument("--sft-gpu")
    p.add_argument("--eval-gpu")
    p.add_argument("--json", action="store_true", help="also print the estimate as JSON")
    p.set_defaults(func=cmd_cost)

    p = sub.add_parser("report", help="one self-contained HTML page: metrics, comparisons, curves, cost, traces")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories; the first is the baseline")
    p.add_argument("--out", help="the page to write (default RUN_DIR/report.html, or report-compare.html "
                                 "in the first RUN_DIR when given several)")
    p.set_defaults(func=cmd_report)

    from stages.serve import ServeConfig

    p = sub.add_parser("serve", help="serve the agent over HTTP (/answer, /evaluate) behind a bearer token")
    add_config_flags(p, ServeConfig)
    p.set_defaults(func=cmd_serve)

    from stages.grpo import GRPOConfig
    from stages.preference import MineConfig, PreferenceConfig
    from stages.rft import RFTConfig

    for name, module, fn, cls, config, default, text in (
        ("mine-pairs", "preference", "mine", "MineConfig", MineConfig, "runs/pairs",
         "preference pairs: the model's failures vs correct traces of the same questions"),
        ("simpo", "preference", "train", "PreferenceConfig", PreferenceConfig, "runs/simpo",
         "SimPO (or --preset dpo) on the pairs, continuing an SFT adapter"),
        ("rft", "rft", "run", "RFTConfig", RFTConfig, "runs/rft", "rejection fine-tuning: sample, keep the judged-correct, SFT"),
        ("grpo", "grpo", "run", "GRPOConfig", GRPOConfig, "runs/grpo", "GRPO with the search tools on a LoRA adapter"),
    ):
        p = sub.add_parser(name, help=text)
        add_config_flags(p, config)
        p.add_argument("--out", help=f"output directory (default {default})")
        p.set_defaults(func=_stage_cmd(module, fn, cls, default))

    p = sub.add_parser("prepare-model", help="convert/locate (or --download) a model and print its directory")
    p.add_argument("--model", default="embedded")
    p.add_argument("--download", action="store_true",
                   help="fetch a hub model once into the model cache (HF_TOKEN from the environment for gated ones)")
    p.set_defaults(func=cmd_prepare_model)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
    from .config import ConfigError
    from .data import DataError
    from .models import ModelError
    from .leakage import LeakageError
    from stages.evaluate import RunDirError
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
