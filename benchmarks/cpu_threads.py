"""How to spend 2 CPU cores on many small pretraining runs: one process with 2 threads, or two with 1 each?

    python benchmarks/cpu_threads.py        # about 2 minutes on 2 cores; writes benchmarks/results/cpu_threads.json

Times optimizer steps of the ablation grid's model (`randsac_pretrain_vit_micro_patch4_32`, blob:11-5, norm-pix,
batch 128 of random 32x32 images, AdamW) after 4 warm-up steps: one process with 2 threads, one with 1 thread alone,
then two 1-thread processes at once. The grid's `--threads 1` with disjoint `--rows` uses the last layout. A step's
CPU time is also lower with 1 thread (no spin-waiting), so equal-CPU-time rows must share a thread count.
"""
import json
import os
import subprocess
import sys
import time

STEPS, WARMUP = 10, 4


def worker(threads: int) -> None:
    import timm
    import torch

    import randsac_timm  # noqa: F401  (registers the models)

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = timm.create_model('randsac_pretrain_vit_micro_patch4_32', in_chans=1, segments='blob:11-5', norm_pix=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    images = torch.randn(128, 1, 32, 32)
    for step in range(WARMUP + STEPS):
        if step == WARMUP:
            wall, cpu = time.perf_counter(), time.process_time()
        loss = model(images).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(json.dumps(dict(threads=threads, steps_per_s=STEPS / wall, cpu_s_per_step=cpu / STEPS)))


def _run(threads_per_process):
    procs = [subprocess.Popen([sys.executable, __file__, '--worker', str(t)], stdout=subprocess.PIPE, text=True)
             for t in threads_per_process]
    return [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]


def main() -> None:
    layouts = {'1 process x 2 threads': [2], '1 process x 1 thread': [1], '2 processes x 1 thread': [1, 1]}
    results = {}
    for name, layout in layouts.items():
        runs = _run(layout)
        results[name] = dict(processes=runs, total_steps_per_s=sum(r['steps_per_s'] for r in runs))
        cpu = ', '.join(f'{r["cpu_s_per_step"]:.2f}' for r in runs)
        print(f'{name:24s} {results[name]["total_steps_per_s"]:.3f} steps/s in all, CPU-s/step {cpu}', flush=True)
    speedup = (results['2 processes x 1 thread']['total_steps_per_s']
               / results['1 process x 2 threads']['total_steps_per_s'])
    print(f'two 1-thread processes / one 2-thread process: {speedup:.2f}x')
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'results', 'cpu_threads.json')
    with open(out, 'w') as f:
        json.dump(dict(cpu_count=os.cpu_count(), steps=STEPS, warmup=WARMUP, layouts=results,
                       two_single_thread_speedup=speedup, command='python benchmarks/cpu_threads.py'), f, indent=2)


if __name__ == '__main__':
    if len(sys.argv) == 3 and sys.argv[1] == '--worker':
        worker(int(sys.argv[2]))
    else:
        main()
