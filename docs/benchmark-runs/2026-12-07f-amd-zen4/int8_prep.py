"""Train MiniLM on real AG News rows with several seeds and export each to fp32 ONNX (study of int8's cost)."""
import os, subprocess, sys, time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))
import harness as h
work = Path(os.environ.get("INT8_WORK", "/tmp/int8/work")); work.mkdir(exist_ok=True)
files = h.rows_files(work, 2000, 3000)  # same 2000 train rows as inference.py (seed 0); 3000 held out
seeds = [int(s) for s in sys.argv[1:]] or [0, 1, 2, 3]
for s in seeds:
    run, exp = work / f"run{s}", work / f"exp{s}"
    t0 = time.time()
    args = h.lorafit_args(h.minilm(), files, run, "--epochs", 2, "--seed", s)
    subprocess.run([str(Path(sys.executable).parent / "lorafit"), "train", *args], check=True, stdout=subprocess.DEVNULL)
    from lorafit.export import export
    export(run, exp, quantize="int8", bench=False, overwrite=True)
    print(f"seed {s}: {time.time()-t0:.0f}s", flush=True)
