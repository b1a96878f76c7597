"""../2026-12-07c-amd-zen4/profile_steps.py (python steps.py START STOP [--prof] [lorafit train flags]: times lorafit's
training steps START..STOP in-process) with observers switched on by environment variables:
PERFOUT=FILE (perf record -F 1999 -g over the timed steps), STRACE=FILE (strace of memory syscalls over them),
MALLOPT=mmap=N,trim=N (glibc mallopt before training); prints `STEP n shape` before each training step (for
ONEDNN_VERBOSE=profile_create logs). START must be at least 1: the observer attaches after step START-1, outside the
timed window. Set THP_MEM_ALLOC_ENABLE=1 to match the `lorafit` command (profile_steps.py imports torch before the
command would set it)."""
import ctypes
import os
import runpy
import signal
import subprocess
import sys
import time
from pathlib import Path

from transformers import Trainer

PROFILE_STEPS = Path(__file__).resolve().parent.parent / "2026-12-07c-amd-zen4" / "profile_steps.py"
MALLOPT_PARAMS = {"trim": -1, "top_pad": -2, "mmap": -3, "mmap_max": -4, "arena_max": -8}
START, STOP = int(sys.argv[1]), int(sys.argv[2])

if os.environ.get("MALLOPT"):
    libc = ctypes.CDLL("libc.so.6")
    for kv in os.environ["MALLOPT"].split(","):
        k, v = kv.split("=")
        print("mallopt", k, v, "->", libc.mallopt(MALLOPT_PARAMS[k], int(v)))


def observer() -> list[str] | None:
    pid = str(os.getpid())
    if os.environ.get("STRACE"):
        return ["strace", "-f", "-e", "trace=mmap,munmap,mprotect,madvise,brk", "-o", os.environ["STRACE"], "-p", pid]
    if os.environ.get("PERFOUT"):
        return ["perf", "record", "-F", "1999", "-g", "-p", pid, "-o", os.environ["PERFOUT"]]
    return None


real_step = Trainer.training_step
state = {"n": 0, "proc": None}


def observed_step(self, model, inputs, *args, **kwargs):
    """The real training step, with the observer attached after step START-1 and detached after step STOP-1
    (profile_steps.py wraps this and times START..STOP around it)."""
    n = state["n"]
    state["n"] += 1
    print(f"STEP {n} {tuple(inputs['input_ids'].shape)}", flush=True)
    out = real_step(self, model, inputs, *args, **kwargs)
    command = observer()
    if n == START - 1 and command:
        state["proc"] = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)  # let it attach
    if n == STOP - 1 and state["proc"]:
        state["proc"].send_signal(signal.SIGINT)
        state["proc"].wait()
    return out


Trainer.training_step = observed_step
runpy.run_path(str(PROFILE_STEPS), run_name="__main__")
