"""Smoke runs of every benchmark script (tiny sizes), so that they cannot rot. No timing is asserted: the speed goals
are measured by the scripts themselves and written in docs/benchmarks.md."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"

# script -> (arguments, a piece of the table it must print)
SCRIPTS = {
    "train_throughput.py": (["--smoke", "--lockstep"], "| baseline: HF Trainer + PEFT"),
    "precision.py": (["--smoke"], "| bf16      |"),
    "lora_vs_full.py": (["--smoke"], "| full fine-tuning"),
    "inference.py": (["--smoke"], "| onnx_int8"),
    "int8_limit.py": (["--smoke"], "| linear layer"),
    "hardware_limit.py": (["--smoke"], "| useful % of peak |"),
    "cost_growth.py": (["--smoke"], "| max_length |"),
    "eval_order.py": (["--smoke"], "| sorted"),
    "defaults_sweep.py": (["--train", "64", "--test", "32", "--quick"], "defaults (r8 q,v lr1e-3 2ep bs32)"),
    "memory_scaling.py": (["--sizes", "300", "600", "--steps", "1"], "ratio peak("),
}


def test_every_script_is_covered():
    scripts = {p.name for p in BENCH.glob("*.py")} - {"common.py", "harness.py"}
    assert scripts == set(SCRIPTS), "add the new benchmark script to SCRIPTS (with a smoke size)"


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_benchmark_smoke(script, tmp_path):
    args, expected = SCRIPTS[script]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "TMPDIR": str(tmp_path)}
    proc = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert expected in proc.stdout, proc.stdout[-3000:]
    if script == "train_throughput.py":  # --lockstep: the turns held
        assert "overlapping steps: 0\n" in proc.stdout, proc.stdout[-3000:]
        # smoke turns on --fp32-without-release: its row and its ratio line
        assert "| lorafit train --precision fp32, memory release off" in proc.stdout, proc.stdout[-3000:]
        assert "lorafit fp32 with the memory release off (--set release_memory=false): median" in proc.stdout
        # the fp32 ceiling from the round's own matmul peak and FLOP counts
        assert "ceiling of lorafit fp32 against this baseline (its matmuls at the peak, every other op free):" \
            in proc.stdout, proc.stdout[-3000:]
