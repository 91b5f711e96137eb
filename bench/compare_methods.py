"""Compare every method on one real data set: methods x partitions x seeds, one results table and two plots.

Every run goes through the same engine (`fedhello_nb.engine.run_experiment`) with the same model, data, partition,
client selection, local optimiser and evaluation; only `allocation.strategy` differs between the methods of a cell.

    python bench/compare_methods.py                      # the default grid (BANKING77, see DEFAULTS below)
    python bench/compare_methods.py --tiny               # a few seconds: tiny random BERT, the default task
    python bench/compare_methods.py --methods fedhello fedra hetlora --seeds 0 --rounds 5
    python bench/compare_methods.py --set lora.r=16 --set train.lr=0.005   # any configuration field

Writes into --out: results.csv (method, partition, seed, final_accuracy, best_accuracy, rounds, seconds, ...),
curves.csv (accuracy per round), summary.csv (mean and std over seeds), final_accuracy.png,
accuracy_per_round.png, and one engine run folder per (method, partition, seed) under runs/. A finished run is not
repeated when the command is started again with the same settings (delete --out or pass --fresh to redo it), so an
interrupted grid continues where it stopped.
"""
from __future__ import annotations
import argparse, importlib.util, json, os, shutil, sys, time
from pathlib import Path

os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')

# method name in the table -> (allocation.strategy, extra overrides)
METHODS = {
    'full':        ('full', {}),                            # FedIT: every client trains every layer (upper bound)
    'fedhello':    ('fedhello', {}),                        # RGD warm-up, then FIM-HLA (the Fed-HeLLo schedule)
    'rgd':         ('rgd', {'allocation.pattern': 'bottleneck'}),  # RGD-HLA, Bottleneck, alone
    'fim':         ('fim', {}),                             # FIM-HLA alone
    'fedra':       ('fedra', {}),                           # c_k layers uniformly at random
    'exclusive':   ('exclusive', {}),                       # only full-capacity clients train
    'straggler':   ('straggler', {}),                       # everyone trains the smallest capacity's layers
    'hetlora':     ('hetlora', {}),
    'flexlora':    ('flexlora', {}),
    'flora':       ('flora', {}),
    'hierfedlora': ('hierfedlora', {}),                     # only when fedhello_nb.hierfedlora exists
}
PARTITIONS = ('iid', 'dirichlet', 'pathological')

# The default grid: 10 methods (11 with HierFedLoRA) x 3 partitions x 3 seeds = 90 (99) runs of the pretrained
# all-MiniLM-L6-v2 on BANKING77 (77 intents). Sized to finish within 60 minutes on two otherwise idle CPU cores
# (about 25-35 s per run); see --help for each knob.
DEFAULTS = dict(data='shared:banking77', model='all-MiniLM-L6-v2', rounds=10, clients=20, per_round=5,
                local_steps=5, batch_size=16, lr=1e-2, max_train=2000, max_test=500, max_length=48,
                alpha=0.5, classes_per_client=8, seeds=[0, 1, 2], out='runs/compare_methods')
# --tiny: a random 4-block BERT on the project's own 13-class task; seconds for the whole grid
TINY = dict(data='default', model='tiny-bert', rounds=2, clients=6, per_round=3, local_steps=1, batch_size=8,
            lr=1e-2, max_train=150, max_test=60, max_length=32, alpha=0.5, classes_per_client=3, seeds=[0],
            out='runs/compare_methods_tiny')


def available_methods() -> list[str]:
    "Every method of the comparison that can run here (HierFedLoRA once `fedhello_nb.hierfedlora` exists)."
    have_hier = importlib.util.find_spec('fedhello_nb.hierfedlora') is not None
    return [m for m in METHODS if m != 'hierfedlora' or have_hier]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('--tiny', action='store_true', help='tiny random model, default task, 2 rounds: for tests')
    p.add_argument('--methods', nargs='+', default=None, help=f'subset of {list(METHODS)} (default: all available)')
    p.add_argument('--partitions', nargs='+', default=list(PARTITIONS), choices=PARTITIONS)
    p.add_argument('--seeds', nargs='+', type=int, default=None, help=f"seeds (default {DEFAULTS['seeds']})")
    p.add_argument('--data', default=None, help="data.source: 'shared:<name>', a local folder/file, or 'default'")
    p.add_argument('--model', default=None, help='model.name')
    for name, typ, what in (('rounds', int, 'global rounds'), ('clients', int, 'K clients'),
                            ('per-round', int, 'clients per round'), ('local-steps', int, 'optimizer steps per client'),
                            ('batch-size', int, 'client batch size'), ('lr', float, 'AdamW learning rate'),
                            ('max-train', int, 'training rows used (seeded subset)'),
                            ('max-test', int, 'held-out rows evaluated'), ('max-length', int, 'tokens per text'),
                            ('alpha', float, 'Dirichlet concentration of the dirichlet partition'),
                            ('classes-per-client', int, 'M of the pathological partition')):
        p.add_argument(f'--{name}', type=typ, default=None, help=f'{what} (default {DEFAULTS[name.replace("-", "_")]})')
    p.add_argument('--set', action='append', default=[], metavar='SECTION.FIELD=VALUE',
                   help='any other configuration field, for every run (repeatable)')
    p.add_argument('--out', default=None, help=f"output folder (default {DEFAULTS['out']})")
    p.add_argument('--fresh', action='store_true', help='redo runs that already finished in --out')
    p.add_argument('--quiet', action='store_true', help='no line per run')
    a = p.parse_args(argv)
    base = TINY if a.tiny else DEFAULTS
    for k, v in base.items():
        if getattr(a, k, None) is None: setattr(a, k, v)
    a.methods = a.methods or available_methods()
    unknown = [m for m in a.methods if m not in METHODS]
    if unknown: p.error(f'unknown methods {unknown}; known: {list(METHODS)}')
    if 'hierfedlora' in a.methods and 'hierfedlora' not in available_methods():
        p.error('hierfedlora needs the module fedhello_nb.hierfedlora, which is not there yet')
    return a


def run_config(a, method:str, partition:str, seed:int) -> dict:
    "The nested configuration of one run of the grid."
    from fedhello_nb.config import parse_override
    strategy, extra = METHODS[method]
    cfg = {'name': f'{method}/{partition}/s{seed}',
           'model': {'name': a.model, 'max_length': a.max_length},
           'data': {'source': a.data, 'max_train': a.max_train, 'max_test': a.max_test},
           'partition': {'scheme': partition, 'alpha': a.alpha, 'classes_per_client': a.classes_per_client, 'seed': seed},
           'clients': {'num_clients': a.clients, 'per_round': a.per_round},
           'allocation': {'strategy': strategy, 'seed': seed},
           'train': {'rounds': a.rounds, 'local_steps': a.local_steps, 'batch_size': a.batch_size, 'lr': a.lr, 'seed': seed},
           'output': {'quiet': True, 'checkpoint_every': 0}}
    if a.tiny: cfg['data']['proxy_size'] = 16
    overrides = [*extra.items(), *(_split_set(s) for s in a.set)]
    for key, value in overrides:
        section, _, field = key.partition('.')
        cfg.setdefault(section, {})[field] = parse_override(key, value)[1] if isinstance(value, str) else value
    return cfg


def _split_set(text:str) -> tuple[str, str]:
    key, sep, value = text.partition('=')
    if not sep or '.' not in key: raise SystemExit(f'--set expects SECTION.FIELD=VALUE, got {text!r}')
    return key.strip(), value.strip()


def run_one(cfg:dict, run_dir:Path, fresh:bool) -> dict:
    "Run (or read back) one cell of the grid; returns its results row and its accuracy per round."
    from fedhello_nb.config import make_config
    from fedhello_nb.engine import run_experiment
    from fedhello_nb.runio import read_table
    cfg = make_config(cfg, **{'output.dir': str(run_dir)})
    done = run_dir/'result.json'
    if done.is_file() and not fresh:
        saved = json.loads(done.read_text())
        if saved.get('config') == cfg.to_dict():
            return saved['row'], saved['curve']
    if run_dir.exists(): shutil.rmtree(run_dir)
    t0, c0 = time.perf_counter(), time.process_time()
    res = run_experiment(cfg)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    ev = res.rounds.dropna(subset=['accuracy'])
    row = {'final_accuracy': float(ev['accuracy'].iloc[-1]), 'best_accuracy': float(ev['accuracy'].max()),
           'final_macro_f1': float(ev['macro_f1'].iloc[-1]), 'rounds': int(len(res.rounds)),
           'seconds': round(seconds, 2), 'cpu_seconds': round(cpu, 2),
           'client_seconds': round(float(res.clients['seconds'].sum()), 2)}
    curve = {'round': [int(r) + 1 for r in ev['round']], 'accuracy': [float(x) for x in ev['accuracy']]}
    done.write_text(json.dumps({'config': cfg.to_dict(), 'row': row, 'curve': curve}))
    return row, curve


def run_grid(a) -> tuple['pd.DataFrame', 'pd.DataFrame']:
    "Every (method, partition, seed) of the grid, in that nesting (seeds innermost): (results, curves)."
    import pandas as pd
    out = Path(a.out)
    rows, curves = [], []
    cells = [(m, p, s) for p in a.partitions for m in a.methods for s in a.seeds]
    t_grid = time.perf_counter()
    for i, (m, p, s) in enumerate(cells):
        row, curve = run_one(run_config(a, m, p, s), out/'runs'/f'{m}__{p}__s{s}', a.fresh)
        rows.append({'method': m, 'partition': p, 'seed': s, **row})
        curves += [{'method': m, 'partition': p, 'seed': s, 'round': r, 'accuracy': acc}
                   for r, acc in zip(curve['round'], curve['accuracy'])]
        if not a.quiet:
            print(f'[{i + 1}/{len(cells)}] {m:11s} {p:12s} seed {s}: final {row["final_accuracy"]:.4f} '
                  f'best {row["best_accuracy"]:.4f} ({row["seconds"]:.0f} s; grid {time.perf_counter() - t_grid:.0f} s)',
                  flush=True)
        write_results(out, pd.DataFrame(rows), pd.DataFrame(curves))
    return pd.DataFrame(rows), pd.DataFrame(curves)


def summarise(results) -> 'pd.DataFrame':
    "Mean and standard deviation over seeds of the final and best accuracy, per method and partition."
    g = results.groupby(['method', 'partition'], sort=False)
    s = g.agg(final_mean=('final_accuracy', 'mean'), final_std=('final_accuracy', 'std'),
              best_mean=('best_accuracy', 'mean'), best_std=('best_accuracy', 'std'),
              seeds=('seed', 'count'), seconds_mean=('seconds', 'mean')).reset_index()
    return s


def write_results(out:Path, results, curves):
    "results.csv, curves.csv and summary.csv under `out` (rewritten after every run, so a partial grid is readable)."
    out.mkdir(parents=True, exist_ok=True)
    results.to_csv(out/'results.csv', index=False)
    curves.to_csv(out/'curves.csv', index=False)
    summarise(results).to_csv(out/'summary.csv', index=False)


def plot_final(results, path:Path):
    "Final accuracy per method, grouped by partition: mean over seeds with the seeds' spread (min-max) and points."
    import matplotlib; matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    import numpy as np
    methods, parts = list(dict.fromkeys(results['method'])), list(dict.fromkeys(results['partition']))
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(methods) * len(parts) / 2), 4))
    width = 0.8 / len(methods)
    colors = plt.get_cmap('tab20')(np.linspace(0, 1, max(len(methods), 2)))
    for j, m in enumerate(methods):
        for i, p in enumerate(parts):
            acc = results[(results['method'] == m) & (results['partition'] == p)]['final_accuracy'].to_numpy()
            if not len(acc): continue
            x = i - 0.4 + width * (j + 0.5)
            ax.bar(x, acc.mean(), width * 0.9, color=colors[j], label=m if i == 0 else None,
                   yerr=[[acc.mean() - acc.min()], [acc.max() - acc.mean()]], capsize=2, error_kw={'lw': 0.8})
            ax.scatter(np.full(len(acc), x), acc, s=6, color='k', zorder=3)
    ax.set_xticks(range(len(parts)), parts)
    ax.set_ylabel('final test accuracy'); ax.grid(axis='y', alpha=.3)
    ax.set_title('final accuracy (bar: mean over seeds, whisker: min-max, dots: seeds)')
    ax.legend(fontsize=7, ncol=2, loc='upper left', bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout(); fig.savefig(path, dpi=110); plt.close(fig)


def plot_curves(curves, path:Path):
    "Test accuracy per round, one panel per partition, one line per method (mean over seeds, band: min-max)."
    import matplotlib; matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    import numpy as np
    parts, methods = list(dict.fromkeys(curves['partition'])), list(dict.fromkeys(curves['method']))
    fig, axes = plt.subplots(1, len(parts), figsize=(4.2 * len(parts), 3.4), sharey=True, squeeze=False)
    colors = plt.get_cmap('tab20')(np.linspace(0, 1, max(len(methods), 2)))
    for ax, p in zip(axes[0], parts):
        for j, m in enumerate(methods):
            c = curves[(curves['partition'] == p) & (curves['method'] == m)]
            if not len(c): continue
            g = c.groupby('round')['accuracy']
            mean, lo, hi = g.mean(), g.min(), g.max()
            ax.plot(mean.index, mean.values, color=colors[j], lw=1.2, label=m)
            ax.fill_between(mean.index, lo.values, hi.values, color=colors[j], alpha=.12)
        ax.set_title(p); ax.set_xlabel('round'); ax.grid(alpha=.3)
    axes[0][0].set_ylabel('test accuracy')
    axes[0][-1].legend(fontsize=7, loc='upper left', bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout(); fig.savefig(path, dpi=110); plt.close(fig)


def table_text(results) -> str:
    "The printed table: mean ± std of the final accuracy (best accuracy after the slash), methods x partitions."
    s = summarise(results)
    cell = lambda r: (f"{r.final_mean:.4f} ± {0 if r.final_std != r.final_std else r.final_std:.4f} / "
                      f"{r.best_mean:.4f}")
    s['cell'] = s.apply(cell, axis=1)
    t = s.pivot(index='method', columns='partition', values='cell')
    t = t.reindex(index=list(dict.fromkeys(results['method'])), columns=list(dict.fromkeys(results['partition'])))
    return t.to_string()


def main(argv=None) -> int:
    a = parse_args(argv)
    import pandas as pd
    out = Path(a.out)
    n = len(a.methods) * len(a.partitions) * len(a.seeds)
    print(f'compare_methods: {len(a.methods)} methods x {len(a.partitions)} partitions x {len(a.seeds)} seeds = {n} runs; '
          f'{a.model} on {a.data}, {a.rounds} rounds, {a.clients} clients ({a.per_round} per round) -> {out}', flush=True)
    t0 = time.perf_counter()
    results, curves = run_grid(a)
    write_results(out, results, curves)
    plot_final(results, out/'final_accuracy.png')
    plot_curves(curves, out/'accuracy_per_round.png')
    with pd.option_context('display.width', 200, 'display.max_columns', 20, 'display.max_rows', 500):
        print('\nresults (one row per run):')
        print(results.to_string(index=False))
        print('\nfinal accuracy, mean ± std over seeds / best accuracy (mean):')
        print(table_text(results))
    print(f'\n{n} runs in {time.perf_counter() - t0:.0f} s; tables and plots in {out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
