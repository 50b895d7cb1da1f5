"""One writer per run directory: a second process is refused with one line naming the holder."""
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hopsmith import cli
from hopsmith.runlock import LOCK_NAME, RunLockError, run_lock

ROOT = Path(__file__).resolve().parent.parent

HOLD = textwrap.dedent("""
    import sys, time
    from hopsmith.runlock import run_lock
    with run_lock(sys.argv[1]):
        print("held", flush=True)
        time.sleep(60)
""")


@pytest.fixture()
def holder(tmp_path):
    """holder(path) -> another process holding path's lock until the test ends."""
    procs = []

    def start(path: Path):
        p = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE, text=True, cwd=ROOT,
                             env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
        assert p.stdout.readline().strip() == "held"
        procs.append(p)
        return p

    yield start
    for p in procs:
        p.kill()
        p.wait()


def test_a_second_writer_is_refused_and_the_first_keeps_its_files(tmp_path, holder, capsys):
    out = tmp_path / "run"
    proc = holder(out)
    (out / "results.jsonl").write_text('{"question_id": "x"}\n')
    code = cli.main(["eval", "--data", "musique", "--limit", "1", "--out", str(out)])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("hopsmith: error")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in err
    assert f"pid {proc.pid}" in errors[0] and "in use" in errors[0] and "another --out" in errors[0]
    assert (out / "results.jsonl").read_text() == '{"question_id": "x"}\n'
    assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME, "results.jsonl"]  # the holder's lock is untouched


def test_a_run_inside_a_held_parent_run_is_refused(tmp_path, holder):
    holder(tmp_path / "ladder")
    with pytest.raises(RunLockError, match="parent run"):
        with run_lock(tmp_path / "ladder" / "eval-base"):
            pass


def test_one_process_nests_and_a_finished_or_killed_holder_frees_the_root(tmp_path, holder):
    with run_lock(tmp_path / "ladder"):
        with run_lock(tmp_path / "ladder" / "eval-base"), run_lock(tmp_path / "ladder"):
            pass
    proc = holder(tmp_path / "ladder")
    proc.kill()
    proc.wait()
    with run_lock(tmp_path / "ladder"):  # the OS released the killed holder's lock: no stale lock file blocks
        pass


def test_results_without_a_config_are_not_reused(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "results.jsonl").write_text('{"question_id": "x"}\n')
    assert cli.main(["eval", "--data", "musique", "--limit", "1", "--out", str(out)]) == 2
    assert "no config.json" in capsys.readouterr().err
    assert (out / "results.jsonl").read_text() == '{"question_id": "x"}\n'


def test_a_run_leaves_no_lock_and_no_empty_directory(tmp_path):
    with run_lock(tmp_path / "new"):
        assert (tmp_path / "new" / LOCK_NAME).exists()
    assert not (tmp_path / "new").exists()
    (tmp_path / "kept").mkdir()
    with run_lock(tmp_path / "kept"):
        (tmp_path / "kept" / "metrics.json").write_text("{}")
    assert [p.name for p in (tmp_path / "kept").iterdir()] == ["metrics.json"]
