"""HierFedLoRA against full LoRA, HetLoRA and the Fed-HeLLo schedule: final accuracy and simulated time to a target.

Every method runs through the same engine (`fedhello_nb.engine.run_experiment`) with the same model, data,
pathological partition, client selection, local optimiser and evaluation; only `allocation.strategy` differs. Every
run is timed with one simulated clock, HierFedLoRA's (`clock.json` of its run folder: step seconds per backward
depth from the memory chapter's FLOPs, speed factor capacity / L per client, communication linear in the trained
blocks), so time to target accuracy is comparable across methods (`fedhello_nb.hierfedlora.compare_runs`).

    python bench/hierfedlora_compare.py                  # BANKING77, pathological split (DEFAULTS below)
    python bench/hierfedlora_compare.py --tiny           # seconds: tiny random BERT, the project's default task
    python bench/hierfedlora_compare.py --rounds 30 --set hier.deadline=60 --target 0.6

Writes into --out: compare.csv (one row per method and target), curves.csv (accuracy and simulated time per
round), accuracy_vs_time.png, accuracy_vs_round.png, and one engine run folder per method under runs/.
"""
from __future__ import annotations
import argparse, importlib.util, json, os, shutil, sys, time
from pathlib import Path

os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')

# method -> the module it needs besides the engine (None: always available)
METHODS = {'hierfedlora': 'fedhello_nb.hierfedlora', 'full': None, 'hetlora': 'fedhello_nb.rank_methods',
           'fedhello': 'fedhello_nb.fim'}

# BANKING77 (77 intents), pretrained all-MiniLM-L6-v2, 10 clients holding 10 intents each (pathological), every
# client in every round (the hierarchical setting HierFedLoRA is designed for; the same participation for every
# method). Sized for about 30-40 minutes for the four methods on two shared CPU cores with one torch thread.
DEFAULTS = dict(data='shared:banking77', model='all-MiniLM-L6-v2', rounds=20, clients=10, per_round=10,
                local_steps=5, batch_size=16, lr=1e-2, max_train=3000, max_test=770, max_length=48,
                classes_per_client=10, eval_every=2, seed=0, threads=1, out='/tmp/hierfedlora_compare')
TINY = dict(data='default', model='tiny-bert', rounds=3, clients=8, per_round=8, local_steps=1, batch_size=8,
            lr=1e-2, max_train=200, max_test=60, max_length=32, classes_per_client=4, eval_every=1, seed=0,
            threads=1, out='/tmp/hierfedlora_compare_tiny')


def available_methods() -> list[str]:
    "The methods whose modules exist in this checkout."
    return [m for m, mod in METHODS.items() if mod is None or importlib.util.find_spec(mod) is not None]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('--tiny', action='store_true', help='tiny random model, default task, 3 rounds: for tests')
    p.add_argument('--methods', nargs='+', default=None, choices=list(METHODS), help='default: every available method')
    for name, typ in (('data', str), ('model', str), ('rounds', int), ('clients', int), ('per-round', int),
                      ('local-steps', int), ('batch-size', int), ('lr', float), ('max-train', int), ('max-test', int),
                      ('max-length', int), ('classes-per-client', int), ('eval-every', int), ('seed', int), ('threads', int),
                      ('out', str)):
        p.add_argument(f'--{name}', type=typ, default=None, help=f'default {DEFAULTS[name.replace("-", "_")]!r} (--tiny: {TINY[name.replace("-", "_")]!r})')
    p.add_argument('--target', type=float, nargs='+', default=None,
                   help='target accuracies; default: hier.target_accuracy when set, else the best accuracy every '
                        'method reached, and 90%% of it')
    p.add_argument('--set', action='append', default=[], metavar='SECTION.FIELD=VALUE', help='any configuration field, every run')
    p.add_argument('--fresh', action='store_true', help='delete --out first')
    a = p.parse_args(argv)
    base = TINY if a.tiny else DEFAULTS
    for k, v in base.items():
        if getattr(a, k) is None: setattr(a, k, v)
    a.methods = a.methods or available_methods()
    missing = [m for m in a.methods if m not in available_methods()]
    if missing: p.error(f'methods {missing} need modules that are not available here: {[METHODS[m] for m in missing]}')
    if 'hierfedlora' not in a.methods: p.error('hierfedlora must be one of --methods (its clock times every run)')
    return a


def base_config(a) -> dict:
    "The configuration every method shares (strategy and output folder aside)."
    from fedhello_nb.config import make_config, parse_override
    cfg = dict(name='hierfedlora_compare', model={'name': a.model, 'max_length': a.max_length},
               data={'source': a.data, 'max_train': a.max_train, 'max_test': a.max_test},
               partition={'scheme': 'pathological', 'classes_per_client': a.classes_per_client, 'seed': a.seed},
               clients={'num_clients': a.clients, 'per_round': a.per_round},
               train={'rounds': a.rounds, 'local_steps': a.local_steps, 'batch_size': a.batch_size, 'lr': a.lr, 'seed': a.seed},
               eval={'every': a.eval_every}, output={'quiet': True})
    overrides = dict(parse_override(*s.split('=', 1)) for s in a.set)
    return make_config(cfg, **overrides).to_dict()    # validated once, before anything runs


def main(argv=None):
    a = parse_args(argv)
    import pandas as pd, torch
    torch.set_num_threads(a.threads)   # on shared cores, two spinning OpenMP threads were 13x slower than one
    from fedhello_nb.engine import run_experiment
    from fedhello_nb.hierfedlora import SimulatedClock, compare_runs
    out = Path(a.out)
    if a.fresh and out.exists(): shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = base_config(a)
    order = ['hierfedlora'] + [m for m in a.methods if m != 'hierfedlora']
    runs, t_all = {}, time.perf_counter()
    for m in order:
        run_dir = out/'runs'/m
        if run_dir.exists(): shutil.rmtree(run_dir)
        t0 = time.perf_counter()
        runs[m] = run_experiment(cfg, allocation__strategy=m, output__dir=str(run_dir))
        print(f'{m:12s} final accuracy {runs[m].final["accuracy"]:.4f}  ({time.perf_counter() - t0:.0f} s)', flush=True)
    clock = SimulatedClock.from_dict(json.loads((out/'runs'/'hierfedlora'/'clock.json').read_text()))
    best_all = min(float(r.rounds['accuracy'].max()) for r in runs.values())
    given = cfg['hier'].get('target_accuracy')
    targets = a.target or ([given] if given else [0.9 * best_all, best_all])
    tables = []
    for target in targets:
        t = compare_runs(runs, clock, target).reset_index()
        t.insert(1, 'target', target)
        tables.append(t)
    table = pd.concat(tables, ignore_index=True)
    curves = pd.concat([clock.add_to(r.rounds, r.clients).assign(method=m)[['method', 'round', 'accuracy', 'sim_seconds', 'sim_time']]
                        for m, r in runs.items()], ignore_index=True)
    table.to_csv(out/'compare.csv', index=False)
    curves.to_csv(out/'curves.csv', index=False)
    _plots(curves, targets, out)
    hier = runs['hierfedlora'].rounds
    with pd.option_context('display.width', 200, 'display.max_columns', 20, 'display.float_format', '{:.4g}'.format):
        print(f'\nclock: {clock.source} step seconds per depth {[round(s, 3) for s in clock.step_seconds]}, '
              f'speeds {sorted(set(round(s, 3) for s in clock.speeds))}')
        print(f'HierFedLoRA arms per round: {" | ".join(hier["arms"].astype(str))}')
        print(table.to_string(index=False))
    print(f'\ntotal {time.perf_counter() - t_all:.0f} s; tables and plots in {out}')
    return table


def _plots(curves, targets, out:Path):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    for x, name in (('sim_time', 'accuracy_vs_time.png'), ('round', 'accuracy_vs_round.png')):
        fig, ax = plt.subplots(figsize=(6, 3.6))
        for m, d in curves.dropna(subset=['accuracy']).groupby('method', sort=False):
            ax.plot(d[x] + (1 if x == 'round' else 0), d['accuracy'], marker='o', ms=3, label=m)
        for t in targets: ax.axhline(t, color='grey', lw=.6, ls=':')
        ax.set_xlabel('simulated seconds' if x == 'sim_time' else 'round'); ax.set_ylabel('accuracy'); ax.grid(alpha=.3)
        ax.legend(fontsize=8); fig.tight_layout(); fig.savefig(out/name, dpi=110); plt.close(fig)


if __name__ == '__main__':
    main()
