"""An interrupted `nas-mpq run` finishes by running the same command again: every stage writes
metrics.json last, as its completion marker; a stage without it is resumed from its last.ckpt or
started again, never reused; `--<stage>.resume` reaches that stage alone."""
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from nas_mpq.cli import main
from nas_mpq.export import load_quantized
from nas_mpq.stages.overrides import route_overrides
from nas_mpq.stages.run import restart_flags

STAGES = ("pretrain", "search", "finalize", "uniform")


def test_resume_is_routed_to_its_stage_alone():
    routed = route_overrides(["--finalize.resume", "last", "--finalize.model.method", "ste",
                              "--uniform.resume", "u.ckpt", "--trainer.max_epochs", "1"])
    assert routed["finalize"] == ["--resume", "last", "--model.method", "ste", "--trainer.max_epochs", "1"]
    assert routed["uniform"] == ["--model.method", "ste", "--resume", "u.ckpt", "--trainer.max_epochs", "1"]
    assert routed["search"] == routed["pretrain"] == ["--trainer.max_epochs", "1"]
    with pytest.raises(SystemExit, match="--resume needs a stage"):
        route_overrides(["--resume", "last"])


def test_only_a_marked_stage_is_reused(tmp_path):
    stage = tmp_path / "search"
    assert restart_flags(stage, []) == ["--overwrite", "true"]  # never started
    stage.mkdir()
    (stage / "plan.json").write_text("{}")  # killed after its result, before its marker
    assert restart_flags(stage, []) == ["--overwrite", "true"]
    (stage / "checkpoints").mkdir()
    (stage / "checkpoints" / "last.ckpt").write_bytes(b"ckpt")
    assert restart_flags(stage, []) == ["--overwrite", "true", "--resume", "last"]
    assert restart_flags(stage, ["--resume", "epoch=0.ckpt"]) == ["--overwrite", "true"]  # the user's choice
    assert restart_flags(stage, [], overwrite=True) == ["--overwrite", "true"]  # a fresh start
    (stage / "metrics.json").write_text("{}")
    assert restart_flags(stage, []) is None
    assert restart_flags(stage, [], overwrite=True) == ["--overwrite", "true"]


def test_a_stage_command_names_the_way_to_continue_a_half_written_run(config, tmp_path):
    (tmp_path / "checkpoints").mkdir(parents=True)
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"ckpt")
    (tmp_path / "plan.json").write_text("{}")
    with pytest.raises(SystemExit, match=r"plan.json exists from a previous run; refusing to overwrite it .*"
                                         r"that run did not finish: --resume last --overwrite true continues it"):
        main(["search", "--config", str(config), "--run_dir", str(tmp_path)])


def _without_timings(report: dict) -> dict:
    return {k: v for k, v in report.items() if k != "timings_s"}


@pytest.mark.slow
def test_half_written_stages_are_resumed_not_reused(config, tmp_path):
    run = tmp_path / "run"
    assert main(["run", "--config", str(config), "--run_dir", str(run)]) == 0
    report = json.loads((run / "report.json").read_text())
    for folder in [run / s for s in STAGES] + [run]:  # each marker is the last file written
        marker = folder / ("report.json" if folder == run else "metrics.json")
        assert all(marker.stat().st_mtime_ns >= p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file())
    fp32 = torch.load(run / "pretrain" / "model.ckpt", weights_only=True)["state_dict"]
    # pretrain killed while copying model.ckpt, finalize while exporting, uniform before it began
    for result in (run / "pretrain" / "model.ckpt", run / "finalize" / "model.safetensors"):
        result.write_bytes(result.read_bytes()[:100])
        (result.parent / "metrics.json").unlink()
    shutil.rmtree(run / "uniform")
    (run / "report.json").unlink()
    assert main(["run", "--config", str(config), "--run_dir", str(run), "--finalize.resume", "last"]) == 0
    again = json.loads((run / "report.json").read_text())
    assert set(again["timings_s"]) == {"pretrain", "finalize", "uniform"}  # search was complete: reused
    assert _without_timings(again) == _without_timings(report)
    resumed = torch.load(run / "pretrain" / "model.ckpt", weights_only=True)["state_dict"]
    assert all(torch.equal(fp32[k], resumed[k]) for k in fp32) and fp32.keys() == resumed.keys()
    load_quantized(run / "finalize" / "model.safetensors")


def _start_run(config, run_dir, log) -> subprocess.Popen:
    """`nas-mpq run` in a process of its own; waits until it prints its first line (the run has
    begun: the interpreter and the imports take longer than the run itself)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "nas_mpq.cli", "run", "--config", str(config),
                                 "--run_dir", str(run_dir)], env=env, stdout=out, stderr=subprocess.STDOUT)
    while proc.poll() is None and not log.stat().st_size:
        time.sleep(0.01)
    return proc


def _deterministic(report: dict) -> dict:
    """The report without what differs between two identical runs: timings and file paths."""
    return {k: {f: x for f, x in v.items() if f != "model"} if isinstance(v, dict) else v
            for k, v in _without_timings(report).items()}


@pytest.mark.slow
def test_killed_run_finishes_with_the_same_report(config, tmp_path):
    """SIGKILL `nas-mpq run` up to three times at random points (three seeds), rerun it to its
    end, and compare with a run that was not interrupted: the whole report.json except timings and
    file paths (FP32, mixed and uniform test/val perplexities, sizes, compression, average bits,
    epochs to the best val/ppl, the supernet's val/ppl per epoch, bits used, budget), and
    search/plan.json byte for byte."""
    log = tmp_path / "log.txt"
    proc = _start_run(config, tmp_path / "reference", log)
    start = time.monotonic()
    while proc.poll() is None and not (tmp_path / "reference" / "report.json").exists():
        time.sleep(0.01)
    duration = time.monotonic() - start  # from its first line to its report
    assert proc.wait() == 0, log.read_text()
    reference = json.loads((tmp_path / "reference" / "report.json").read_text())
    hits = 0
    for seed in range(3):
        rng, run = random.Random(seed), tmp_path / f"killed-{seed}"
        for _ in range(3):
            if (run / "report.json").exists():
                break  # it finished before a kill
            left = sum(not (run / s / "metrics.json").exists() for s in STAGES) / len(STAGES)
            proc = _start_run(config, run, log)
            time.sleep(rng.uniform(0.0, duration * left))  # a point in what is left to do
            hits += proc.poll() is None
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        if not (run / "report.json").exists():
            assert _start_run(config, run, log).wait() == 0, log.read_text()[-3000:]
        report = json.loads((run / "report.json").read_text())
        assert _deterministic(report) == _deterministic(reference), f"seed {seed}"
        assert (run / "search" / "plan.json").read_text() == \
            (tmp_path / "reference" / "search" / "plan.json").read_text(), f"seed {seed}"
    assert hits >= 3  # the kills landed while the runs were working
