"""A catalogue of bad command lines: each ends with exit 2, one `hopsmith: error` line naming the problem,
no traceback, and nothing written into the run directory it named."""
import pytest

from hopsmith import cli

D = ["--data", "musique"]
BAD = [
    # numbers out of range, every stage that takes them
    ("eval", [*D, "--max-turns", "0"], "max-turns"),
    ("eval", [*D, "--top-k", "0"], "top-k"),
    ("eval", [*D, "--temperature", "-1"], "temperature"),
    ("eval", [*D, "--max-chars", "-10"], "max-chars"),
    ("eval", [*D, "--batch-size", "0"], "batch-size"),
    ("eval", [*D, "--limit", "0"], "limit"),
    ("eval", [*D, "--limit", "-3"], "limit"),
    ("eval", [*D, "--pool-size", "-5"], "pool-size"),
    ("eval", [*D, "--max-new-tokens", "0"], "max-new-tokens"),
    ("eval", [*D, "--search-failure-rate", "1.5"], "search_failure_rate"),
    ("eval", [*D, "--kv-cache-gb", "-1"], "kv-cache-gb"),
    ("eval", [*D, "--max-turns", "nan"], "max_turns"),
    ("eval", [*D, "--temperature", "nan"], "nan"),
    ("eval", [*D, "--limit", "ten"], "limit"),
    ("eval", [*D, "--allow-leakage", "--drop-leakage"], "allow_leakage"),
    ("eval", ["--data", "nosuchset"], "nosuchset"),
    ("eval", [*D, "--split", "validation"], "validation"),
    ("eval", [*D, "--model", "nosuch:thing"], "nosuch"),
    ("eval", [*D, "--model", "/nonexistent/model/dir"], "/nonexistent/model/dir"),
    ("eval", [*D, "--adapter", "/nonexistent/adapter"], "/nonexistent/adapter"),
    ("eval", [*D, "--config", "/nonexistent.toml"], "config file not found"),
    ("sft", ["--epochs", "0"], "epochs"),
    ("sft", ["--epochs", "-1"], "epochs"),
    ("sft", ["--learning-rate", "0"], "learning-rate"),
    ("sft", ["--max-length", "0"], "max-length"),
    ("sft", ["--batch-size", "0"], "batch-size"),
    ("sft", ["--preset", "nosuch"], "nosuch"),
    ("pipeline", ["--eval-limit", "0"], "eval-limit"),
    ("pipeline", ["--max-traces", "0"], "max-traces"),
    ("pipeline", ["--epochs", "0"], "epochs"),
    ("pipeline", ["--max-turns", "-2"], "max-turns"),
    ("pipeline", ["--preset", "huge"], "huge"),
    ("pipeline", ["--with", "dpo2"], "dpo2"),
    ("pipeline", ["--with", "simpo", "--pair-chosen", "gold"], "pair-chosen"),
    ("pipeline", ["--with", "rft", "--rft-samples", "0"], "rft-samples"),
    ("pipeline", ["--with", "rft", "--rft-temperature", "0"], "rft-temperature"),
    ("rft", ["--sft-batch-size", "0"], "sft-batch-size"),
    ("traces", ["--limit", "0"], "limit"),
    ("traces", ["--top-k", "0"], "top-k"),
    ("traces", ["--max-chars", "0"], "max-chars"),
]
BAD += [
    ("cost", ["--estimate", "--traces", "-5"], "--traces"),
    ("cost", ["--estimate", "--epochs", "0"], "--epochs"),
    ("cost", ["--estimate", "--eval-shards", "0"], "--eval-shards"),
    ("serve", ["--port", "99999"], "port"),
    ("serve", ["--port", "0"], "port"),
    ("matrix", ["--limit", "0"], "limit"),
    ("check-leakage", ["--data", "musique", "--adapter", "/nonexistent/adapter"], "/nonexistent/adapter"),
    ("bench-extraction", ["--data", "musique", "--limit", "0"], "limit"),
    ("sft", ["--traces", "/nonexistent/traces.jsonl"], "/nonexistent/traces.jsonl"),
    ("judge", ["--min-score", "1.5"], "min_score"),
    ("traces", ["--data", "nosuchset"], "nosuchset"),
    ("eval", [*D, "--model", "openai:m@http://127.0.0.1:9/v1?timout=3"], "timout"),
    ("eval", [*D, "--model", "gemini:flash", "--model-options", "{not json"], "model_options"),
    ("eval", [*D, "--extractor", "openai:m@http://127.0.0.1:9/v1?concurrency=abc"], "concurrency"),
    ("eval", [*D, "--model", "gemini:gemini-2.5-flash"], "GEMINI_API_KEY"),
    ("eval", [*D, "--model", "openai:gpt-4o-mini"], "OPENAI_API_KEY"),
    ("pipeline", ["--judge", "gemini:gemini-2.5-flash"], "GEMINI_API_KEY"),
    ("eval", [*D, "--max-context-tokens", "0"], "max-context-tokens"),
    ("eval", [*D, "--bootstrap", "-1"], "bootstrap"),
    ("sft", ["--lora-r", "0"], "lora-r"),
    ("sft", ["--lora-dropout", "1.5"], "lora_dropout"),
    ("report", ["/nonexistent-run"], "/nonexistent-run"),
]
FILE_CASES = ["out_is_a_file", "corrupt_config", "model_config_garbage", "adapter_without_weights"]


@pytest.mark.parametrize("sub,argv,named", BAD, ids=[f"{s} {' '.join(a)}" for s, a, _ in BAD])
def test_bad_input_is_one_clear_line(tmp_path, capsys, monkeypatch, sub, argv, named):
    for key in ("GEMINI_API_KEY", "GOOGLE_API_KEY", "OPENAI_API_KEY", "HOPSMITH_API_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    out = tmp_path / "run"
    flag = {"traces": ["--root", str(out)], "judge": ["--root", str(out)], "serve": [], "cost": [],
            "check-leakage": []}.get(sub, ["--out", str(out)])
    code = cli.main([sub, *argv, *flag])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("hopsmith: error")]
    assert code == 2, err
    assert len(errors) == 1 and "Traceback" not in err, err
    assert named.replace("-", "_") in errors[0].replace("-", "_"), errors[0]
    assert not out.exists(), sorted(out.rglob("*"))


def test_every_config_default_is_in_range():
    """The shared ranges never refuse a default (a sentinel such as max_steps=-1 is not ranged)."""
    from hopsmith.config import EvalConfig, check_values
    from stages import cloud, grpo, judge, matrix, pipeline, preference, rft, serve, sft, traces

    for cls in (EvalConfig, cloud.CloudConfig, grpo.GRPOConfig, judge.JudgeConfig, matrix.MatrixConfig,
                pipeline.PipelineConfig, preference.PreferenceConfig, preference.MineConfig, rft.RFTConfig,
                serve.ServeConfig, sft.SFTConfig, traces.TracesConfig):
        check_values(cls())
    for name, preset in pipeline.PRESETS.items():
        check_values(pipeline.PipelineConfig(preset=name).resolved())


@pytest.mark.parametrize("case", FILE_CASES)
def test_bad_run_directories_are_one_line(tmp_path, capsys, case):
    blocker = tmp_path / "file"
    blocker.write_text("keep me")
    argv = ["eval", "--data", "musique", "--limit", "1"]
    if case == "out_is_a_file":
        out = blocker / "run"  # a directory inside a file
    elif case == "model_config_garbage":
        out = tmp_path / "run"
        (tmp_path / "model").mkdir()
        (tmp_path / "model" / "config.json").write_text("{garbage")
        argv += ["--model", str(tmp_path / "model")]
    elif case == "adapter_without_weights":
        out = tmp_path / "run"
        (tmp_path / "adapter").mkdir()
        (tmp_path / "adapter" / "adapter_config.json").write_text('{"peft_type": "LORA"}')
        argv += ["--adapter", str(tmp_path / "adapter")]
    else:
        out = tmp_path / "run"
        out.mkdir()
        (out / "config.json").write_text("{not json")
    code = cli.main([*argv, "--out", str(out)])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("hopsmith: error")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in err, err
    assert blocker.read_text() == "keep me"
    if case in ("model_config_garbage", "adapter_without_weights"):
        assert not out.exists() and ("config.json" in errors[0] or "adapter_model" in errors[0])
    if case == "corrupt_config":
        assert "config.json" in errors[0] and (out / "config.json").read_text() == "{not json"


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(Exception, match="max_turns"):
        cli.main(["--debug", "eval", "--data", "musique", "--max-turns", "0", "--out", str(tmp_path / "r")])
