"""Where the GPU time of a mod-97 step/evaluation and of an IMDb step/evaluation goes (eager, one process)."""
import sys, torch
sys.path.insert(0, '.')
from torch.profiler import profile, ProfilerActivity
from repro.tasks.modular import ModularConfig, ModularTask
from repro.tasks.imdb import ImdbConfig, ImdbTask

def table(prof, n, rows=22):
    ev = [e for e in prof.key_averages() if e.device_type.name == "CUDA" or getattr(e, "self_device_time_total", 0) > 0]
    ev = sorted(prof.key_averages(), key=lambda e: -e.self_device_time_total)
    tot = sum(e.self_device_time_total for e in ev)
    kern = sum(e.count for e in ev if e.self_device_time_total > 0 and not e.key.startswith("aten::") and not e.key.startswith("cuda"))
    print(f"GPU time per iteration {tot / n / 1000:.3f} ms; kernel-like events per iteration {kern / n:.0f}")
    for e in ev[:rows]:
        if e.self_device_time_total <= 0: break
        print(f"  {e.self_device_time_total / n:9.1f} us  x{e.count / n:5.1f}  {e.key[:100]}")

dev = torch.device('cuda')
RUNS = [("mod97", ModularConfig, ModularTask, dict(weight_decay=0.01)),
                                     ("imdb", ImdbConfig, ImdbTask, dict(data_dir=".devdata/data"))]
for name, cfg_cls, task_cls, over in [r for r in RUNS if len(sys.argv) < 2 or r[0] in sys.argv[1:]]:
    cfg = cfg_cls(device='cuda', **over)
    task = task_cls(cfg, dev)
    params = list(task.model.parameters())
    opt = torch.optim.AdamW(params, lr=1e-3, fused=True) if name == "imdb" else torch.optim.Adam(params, lr=1e-3, betas=(0.9, 0.98), fused=True)
    def step(i):
        opt.zero_grad(set_to_none=False)
        loss = task.loss(task.train_batch(i)); loss.backward()
        if name == "imdb": torch.nn.utils.clip_grad_norm_(params, 5.0, foreach=True)
        opt.step()
    n = 10 if name == "mod97" else 4
    for i in range(3): step(i)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for i in range(n): step(i)
        torch.cuda.synchronize()
    print(f"=== {name} training step"); table(prof, n)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for i in range(n): task.evaluate(2 if name == "imdb" else 10)  # imdb step 2: the per-step batch only
        torch.cuda.synchronize()
    print(f"=== {name} evaluation"); table(prof, n, 12)
    if name == "imdb":
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            task.evaluate(50); torch.cuda.synchronize()
        print("=== imdb grid evaluation (batch + whole splits)"); table(prof, 1, 12)
