"""Time (and with --prof, profile) lorafit's training steps START..STOP in-process: python profile_steps.py START STOP
[--prof] [lorafit train flags]. Prints user/sys CPU, minor faults, samples/s and the time spent in keep_mask;
with --prof writes table.txt and shapes_table.txt (torch.profiler, ops by self CPU time) next to this file."""
import sys, time, resource
from pathlib import Path
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2] / "benchmarks"))
import harness as h
import torch
from transformers import Trainer
exec((HERE / 'profile_keep_mask.py').read_text())
torch.set_num_threads(2)
work = Path("/tmp/lorafit-profile"); work.mkdir(exist_ok=True)
model = h.roberta_folder(work / "roberta")
files = h.rows_files(work, 6400, 64)
START, STOP = int(sys.argv[1]), int(sys.argv[2])
extra = sys.argv[3:]
PROF = "--prof" in sys.argv
orig = Trainer.training_step
state = {"n": 0, "prof": None, "t": []}
def step(self, *a, **kw):
    n = state["n"]; state["n"] += 1
    if n == START:
        acc.update(t=0.0, n=0, rw=0.0)
        state["ru"] = resource.getrusage(resource.RUSAGE_SELF); state["wall"] = time.perf_counter()
        state["prof"] = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) if PROF else None
        if state["prof"]: state["prof"].__enter__()
    t = time.perf_counter()
    out = orig(self, *a, **kw)
    if START <= n < STOP:
        state["t"].append((time.perf_counter() - t, a[1]["input_ids"].shape))
    if n == STOP - 1:
        if state["prof"]:
            state["prof"].__exit__(None, None, None)
            open(HERE / "shapes_table.txt","w").write(state["prof"].key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=100000, max_name_column_width=40, max_shapes_column_width=70)); open(HERE / "table.txt","w").write(state["prof"].key_averages().table(sort_by="self_cpu_time_total", row_limit=50, max_name_column_width=60))
        open(HERE / "shapes.txt","w").write(str(state["t"]))
        ru = resource.getrusage(resource.RUSAGE_SELF); r0 = state["ru"]
        print(f"user {ru.ru_utime-r0.ru_utime:.2f} sys {ru.ru_stime-r0.ru_stime:.2f} minflt {ru.ru_minflt-r0.ru_minflt} wall {time.perf_counter()-state['wall']:.2f}")
        tot = sum(x for x, _ in state["t"]); toks = sum(s[0]*s[1] for _, s in state["t"])
        print(f"steps {len(state['t'])} time {tot:.2f}s  {sum(s[0] for _, s in state['t'])/tot:.2f} samples/s padded tokens/s {toks/tot:.0f}")
        print(f"keep_mask calls {acc['n']} total {acc['t']:.2f}s random_words {acc['rw']:.2f}s")
        raise SystemExit(0)
    return out
Trainer.training_step = step
args = h.lorafit_args(model, files, work / "out", "--set", f"training.max_steps={STOP+2}", *[a for a in extra if a != "--prof"])
try:
    h.lorafit_train(args)
except SystemExit:
    pass
