"""Where does a resumed mod-97 run's extra peak GPU memory come from? Prints allocated / peak MB at each graph capture,
eval and checkpoint. argv: out_dir max_steps [resume]"""
import sys, torch
sys.path.insert(0, '.')
from repro import graphs, engine
from repro.config import load_config
from repro.tasks.modular import ModularConfig, ModularTask
def mb(): return f"alloc {torch.cuda.memory_allocated()/2**20:7.1f} peak {torch.cuda.max_memory_allocated()/2**20:7.1f}"
def wrap(cls, name):
    orig = getattr(cls, name)
    def f(self, *a, **k):
        before = mb(); out = orig(self, *a, **k)
        print(f"{cls.__name__}.{name}: before [{before}] after [{mb()}]", flush=True); return out
    setattr(cls, name, f)
wrap(graphs.GraphedTrainStep, "_capture_shape")
orig_eval = graphs.GraphedEvaluate.__call__
def ev(self, step, key):
    new = key not in self.graphs; before = mb(); out = orig_eval(self, step, key)
    if new: print(f"eval capture at step {step}: before [{before}] after [{mb()}]", flush=True)
    return out
graphs.GraphedEvaluate.__call__ = ev
wrap(engine.Trainer, "save_checkpoint"); wrap(engine.Trainer, "_eager_step")
argv = ["--config", "configs/modular/baseline.yaml", "--device", "cuda", "--progress", "false", "--out_dir", sys.argv[1],
        "--max_steps", sys.argv[2]] + (["--resume"] if len(sys.argv) > 3 else [])
cfg = load_config(ModularConfig, argv, "")
t = engine.Trainer(cfg, ModularTask, argv)
print("after init:", mb(), flush=True)
s = t.run()
print("summary peak", s["peak_gpu_mem_mb"], "resumed_peak", t.resumed_peak_mb)
