"""Every benchmark script runs as the README says (short settings) and prints the figures it promises.

These check that the scripts work and parse their own output; they do not judge the figures (BENCHMARKS.md
does), except where a figure is a correctness property rather than a speed.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from testing.rtc import loopback_only

ROOT = Path(__file__).resolve().parents[2]
NUMBER = r"[-+]?\d+(?:\.\d+)?"


def run_bench(*args: str, timeout: float = 240) -> str:  # under pytest's 300 s, to get the output
    done = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr[-3000:]}"
    assert done.stdout.startswith("machine: ") or args[0] == "bench.gpu", done.stdout
    return done.stdout


@pytest.fixture
def loopback() -> None:
    loopback_only()


def test_gpu_says_plainly_that_it_needs_cuda() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    out = run_bench("bench.gpu")
    assert out.startswith("no CUDA device: ") and "--cpu-check" in out and out.count("\n") == 1


def test_gpu_rejects_a_bad_option() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.gpu", "--sessions", "4,x"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2 and "--sessions and --lock-sessions take comma-separated integers" in done.stderr


def table_rows(out: str, columns: int, after: str) -> dict[int, list[str]]:
    """The rows of the table printed after the line starting with `after`, by their first cell."""
    rows: dict[int, list[str]] = {}
    lines = out.splitlines()
    for line in lines[next(i for i, line in enumerate(lines) if line.startswith(after)) :]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.startswith("|"):
            if rows:
                break
            continue
        if cells[0].isdigit():
            assert len(cells) == columns, line
            rows[int(cells[0])] = cells[1:]
    return rows


def test_gpu_cpu_check_runs_the_engine_per_batch_size_with_sessions_and_against_the_lock() -> None:
    """The CI check of bench.gpu: every part on the CPU, micro models, the shortest settings."""
    out = run_bench(
        "bench.gpu",
        "--cpu-check",
        "--repeats",
        "2",
        "--sessions",
        "2",
        "--seconds",
        "1",
        "--warmup",
        "1",
        "--compare-lock",
        "--lock-sessions",
        "2",
        "--rounds",
        "1",
        "--ahead-seconds",
        "0.5",
    )
    assert out.startswith("machine: ") and "CPU CHECK RUN" in out and "random weights of the micro configs" in out
    batches = table_rows(out, 12, "1. per batch size")
    assert sorted(batches) == [1, 2, 4, 8] and all(re.fullmatch(NUMBER, c) for c in batches[4][:10])  # sizes to 2x4
    ((n, row),) = table_rows(out, 9, "2. N real-time sessions").items()
    assert n == 2 and re.fullmatch(r"\d+\.\.\d+", row[-1])  # lead ticks of the two sessions
    ((n, row),) = table_rows(out, 4, "3. throughput").items()
    assert n == 2 and re.fullmatch(rf"{NUMBER}x", row[-1])
    assert re.search(r"^batcher: \d+ batches", out, re.M)


@pytest.mark.slow
def test_gpu_simulated_device_runs_the_sessions_at_costs_on_paper() -> None:
    out = run_bench(
        "bench.gpu",
        "--cpu-check",
        "--simulate",
        "1+1.6,0.5+0.08",
        "--simulate-lock",
        "12+1.6,3+0.08",
        "--sessions",
        "2",
        "--seconds",
        "1",
        "--warmup",
        "1",
        "--compare-lock",
        "--lock-sessions",
        "2",
        "--rounds",
        "1",
        "--ahead-seconds",
        "0.5",
    )
    assert "SIMULATED DEVICE: faces 1 ms a call + 1.6 ms a row" in out and "1. per batch size" not in out
    ((n, row),) = table_rows(out, 4, "3. throughput").items()
    batcher, lock = (float(row[i].split()[0]) for i in (0, 1))
    assert n == 2 and batcher > 0 and lock > 0


@pytest.mark.slow
def test_stages_prints_every_stage() -> None:
    out = run_bench("bench.stages", "--repeats", "5", "--model-repeats", "1", "--no-full")
    for stage in (
        "lite face render",
        "compositor, demo avatar",
        "VP8 encode",
        "whisper, StreamingFeatures",
        "tiny UNet + VAE decode (infer_faces) B=8",
        "v1.5 log-mel, full 30 s",
        "v1.5 log-mel, placed_log_mel, 2.3 s of audio",
    ):
        assert re.search(rf"^\| {re.escape(stage)}.*\| {NUMBER} \|", out, re.M), stage
    assert re.search(rf"^compositor \+ VP8 encode .* = {NUMBER} ms per frame", out, re.M)


@pytest.mark.slow
def test_avatar_prints_prepare_and_load_times() -> None:
    out = run_bench("bench.avatar")
    assert re.search(r"^demo: 1 frames .* prepare [\d.]+ s .* load median", out, re.M)
    assert re.search(r"^video100: 100 frames .* load median", out, re.M)


@pytest.mark.slow
def test_latency_breaks_the_figure_down_by_stage(loopback: None) -> None:
    out = run_bench("bench.latency", "--trials", "2")
    assert re.search(r"first lip-synced frame at the receiver: median [\d.]+ ms.*\(n=2\)", out)
    for stage in ("tts", "pipeline", "transport"):
        assert re.search(rf"^  {stage} +median [\d.]+ ms", out, re.M), stage


@pytest.mark.slow
def test_pipeline_sync_with_the_receiver_in_another_process(loopback: None) -> None:
    out = run_bench("bench.pipeline", "--only", "sync", "--minutes", "0.2", "--period", "1.5")
    found = re.search(rf", (\d+) bursts: median ({NUMBER}) ms", out)
    assert found, out
    # A/V offset is a correctness property: both onsets come from one tick counter, so it is within one frame.
    assert int(found.group(1)) >= 6 and abs(float(found.group(2))) <= 20, out
    assert "session counters:" in out and "warning" not in out
    # what a viewer sees: the mouth at half of its opening, per burst, against the sound
    half = re.search(
        rf"^2b\. mouth at 50 % of its opening .*, (\d+) bursts: \|offset\| min ({NUMBER}) / median "
        rf"({NUMBER}) / max ({NUMBER}) ms",
        out,
        re.M,
    )
    assert half and int(half.group(1)) == int(found.group(1)), out
    assert float(half.group(4)) <= 20, out


@pytest.mark.slow
def test_pipeline_interrupt(loopback: None) -> None:
    out = run_bench("bench.pipeline", "--only", "interrupt", "--trials", "2")
    assert re.search(r"^3\. interrupt -> first idle frame at the receiver: median [\d.]+ ms.*\(n=2\)", out, re.M), out


@pytest.mark.slow
def test_capacity_one_session(loopback: None) -> None:
    out = run_bench("bench.capacity", "--max-sessions", "1", "--seconds", "2", "--warmup", "1")
    assert re.search(r"^\|  1 \| ", out, re.M) and re.search(r"^answer: ", out, re.M), out


@pytest.mark.slow
def test_pipeline_latency_lite_and_musetalk(loopback: None) -> None:
    out = run_bench("bench.pipeline", "--only", "latency", "--trials", "2")
    assert re.search(r"^1\. latency, .*: median [\d.]+ ms.*\(n=2\)", out, re.M), out
    assert re.search(r"^1b\. same, musetalk engine .*: median [\d.]+ ms.*\(n=3\)", out, re.M), out
    assert re.search(r"budget: batch \d+ .* -> lead \d+ ticks", out), out


@pytest.mark.slow
def test_ws_audio_breaks_the_figure_down_by_stage(loopback: None) -> None:
    out = run_bench("bench.ws_audio", "--trials", "2")
    assert re.search(
        r"^/ws/audio first message -> first lip-synced frame at the receiver: median [\d.]+ ms.*\(n=2\)", out, re.M
    ), out
    for stage in ("socket", "pipeline", "transport"):
        assert re.search(rf"^  {stage} +median [\d.]+ ms", out, re.M), stage
