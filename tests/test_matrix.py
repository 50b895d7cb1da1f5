"""Seed 000's orchestrator x extractor matrix: a tiny local model as the orchestrator, itself and a served reader
(a fake OpenAI-compatible server) as the extractors; the table, the paired differences against the diagonal,
each extractor's benchmark run once, resume per cell, and the same matrix fanned out through the Modal
wrappers (`Function.local`)."""
from __future__ import annotations

import json

import pytest
from fake_servers import chat_reply, models_list

from hopsmith.cli import main
from hopsmith.config import ConfigError
from hopsmith.io import read_jsonl
from hopsmith.tools.extract import EXTRACT_SYSTEM
from stages import matrix


def reader(serve):
    """A served extractor that always reads "Eldon"."""
    return serve(lambda r: chat_reply("Eldon"), get=models_list("reader"))


def _cfg(tiny_dir, url, **kw) -> matrix.MatrixConfig:
    return matrix.MatrixConfig(orchestrators=f"tiny={tiny_dir}", extractors=f"{tiny_dir},reader=openai:reader@{url}/v1",
                               data="musique", limit=3, max_turns=1, max_new_tokens=6, top_k=2, max_chars=100,
                               answer_at_cap=False, bootstrap=50, **kw)


def _extraction_requests(server) -> list[dict]:
    return [r for r in server.requests if r["body"]["messages"][0]["content"] == EXTRACT_SYSTEM]


def test_the_matrix_runs_prints_its_table_and_resumes(tiny_dir, serve, tmp_path, capsys, monkeypatch):
    served = reader(serve)
    cfg = _cfg(tiny_dir, served.url)
    root = tmp_path / "matrix"
    argv = ["matrix", "--orchestrators", cfg.orchestrators, "--extractors", cfg.extractors, "--limit", "3",
            "--max-turns", "1", "--max-new-tokens", "6", "--top-k", "2", "--max-chars", "100", "--no-answer-at-cap",
            "--bootstrap", "50", "--quiet", "--out", str(root)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    own = tiny_dir.name
    assert "EM / F1 / cover-EM (%)" in printed and f"tiny x {own} (diagonal)" in printed
    assert f"vs tiny x {own}: EM " in printed and "McNemar" in printed and "extraction benchmark" in printed

    summary = json.loads((root / "matrix.json").read_text())
    assert summary["rows"] == ["tiny"] and summary["cols"] == [own, "reader"]
    diag, other = summary["cells"][f"tiny x {own}"], summary["cells"]["tiny x reader"]
    assert diag["diagonal"] == own and diag["vs_diagonal"] is None
    v = other["vs_diagonal"]
    assert v["paired_n"] == 3 and v["em"]["paired"]["test"] == "mcnemar_exact" and v["f1"]["paired"]["test"] == "paired_bootstrap"
    for cell in (diag, other):
        assert cell["n"] == 3 and {"mean", "lo", "hi", "n"} <= set(cell["em"]) and cell["ceiling"]["extraction_source"] == "benchmark"
    assert other["backends"]["extractor"]["kind"] == "openai" and diag["backends"]["extractor"]["same_as_agent"]
    # each extractor's benchmark ran once, in its column, and every cell of the column read it
    items = read_jsonl(root / "extraction" / "reader.jsonl")
    assert items and len(_extraction_requests(served)) == len(items)
    assert read_jsonl(root / "cells" / "tiny__reader" / "extraction.jsonl") == items
    assert set(summary["extraction"]) == {own, "reader"}
    assert other["ceiling"]["extraction"] == pytest.approx(summary["extraction"]["reader"]["acc"]["mean"])

    # a rerun reads the complete cells: nothing is loaded, nothing asked
    import hopsmith.agent.backends as backends

    monkeypatch.setattr(backends, "agent_backends", lambda *a, **k: pytest.fail("a complete cell was run again"))
    asked = len(served.requests)
    again = matrix.run(cfg, root, progress=False)
    assert again["cells"] == summary["cells"] and len(served.requests) == asked


def test_axis_labels_and_errors(tiny_dir):
    assert matrix.axis("embedded,served=openai:m@http://h:8000/v1,openai:Org/Big@http://h:9/v1", "extractors") == [
        ("embedded", "embedded"), ("served", "openai:m@http://h:8000/v1"), ("Big@h:9", "openai:Org/Big@http://h:9/v1")]
    assert [label for label, _ in matrix.axis("embedded,embedded?batch_size=2", "x")] == ["embedded", "embedded-2"]
    with pytest.raises(ConfigError, match="--extractors: backend spec 'nope:x'"):
        matrix.MatrixConfig(extractors="self,nope:x")
    with pytest.raises(ConfigError, match="extractor setting, not a model"):
        matrix.MatrixConfig(orchestrators="self")
    cfg = matrix.MatrixConfig(orchestrators=f"{tiny_dir},embedded", extractors="none,embedded")
    assert [matrix.diagonal(cfg, i) for i in range(2)] == [None, 1]


def test_the_matrix_fans_out_through_the_modal_wrappers(tiny_dir, serve, tmp_path, monkeypatch):
    import app
    from hopsmith.volumes import Layout
    from stages import cloud

    monkeypatch.setenv("HOPSMITH_VOLUMES", str(tmp_path / "vol"))
    layout = Layout(tmp_path / "vol")
    served = reader(serve)
    cfg = _cfg(tiny_dir, served.url, seed=1)
    cost = tmp_path / "cost.json"
    inv = app.ModalInvoker(local=True, engine="hf")
    summary = cloud.run_matrix(cfg, inv, run="m1", layout=layout, cost_path=cost, log=lambda m: None)
    assert set(summary["cells"]) == {f"tiny x {tiny_dir.name}", "tiny x reader"}
    assert summary["cells"]["tiny x reader"]["vs_diagonal"]["paired_n"] == 3
    root = layout.eval("m1", "matrix")
    assert (root / "cells" / "tiny__reader" / "metrics.json").exists() and (root / "extraction" / "reader.jsonl").exists()
    stages = json.loads(cost.read_text())["stages"]
    assert stages["matrix"]["containers"] == 4 and stages["matrix"]["gpu"] == "L4"  # 2 benchmarks, then 2 cells
    asked = len(served.requests)
    again = cloud.run_matrix(cfg, inv, run="m1", layout=layout, cost_path=cost, log=lambda m: None)
    assert again["cells"] == summary["cells"] and len(served.requests) == asked  # complete cells are skipped
