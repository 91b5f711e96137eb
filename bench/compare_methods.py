"""Compare every method on one real data set: methods x partitions x seeds, one results table and two plots.

Every run goes through the same engine (`fedhello_nb.engine.run_experiment`) with the same model, data, partition,
client selection, local optimiser and evaluation; only `allocation.strategy` differs between the methods of a cell.

    python bench/compare_methods.py                      # the default grid (BANKING77, see DEFAULTS below)
    python bench/compare_methods.py --tiny               # a few seconds: tiny random BERT, the default task
    python bench/compare_methods.py --methods fedhello fedra hetlora --seeds 0 --rounds 5
    python bench/compare_methods.py --set lora.r=16 --set train.lr=0.005   # any configuration field

The grid is a sweep of the papermill batch runner (`fedhello_nb.batch.run_sweep`): base configuration = the
shared settings, runs = one parameter set per (seed, partition.scheme, allocation.strategy), seeds outermost (a seed
sets train.seed, partition.seed and allocation.seed together). `--papermill` executes every run as the experiment template notebook
(nbs/experiment.ipynb) under papermill; the default runs the same sets in-process (no kernel start per run).
The sweep folder (--out/sweep: sweep.json, base.yaml, one folder per run with run.json) resumes: a finished run is
not repeated when the command is started again with the same settings, so an interrupted grid continues where it
stopped. `fedhello_nb.batch` missing, an in-process loop does the same.

Writes into --out: results.csv (one row per run: method, partition, seed, the test accuracy at the best validation
round and at the final round, macro-F1, the worst client and the 10th percentile of the clients' local accuracy, the
megabytes communicated, seconds, status), curves.csv (test accuracy per evaluated round, with the megabytes
communicated so far), summary.csv (per method and partition: mean and 95% t-interval over seeds, and the paired
difference with Fed-HeLLo, seed by seed), final_accuracy.png, accuracy_per_round.png and accuracy_vs_bytes.png
(accuracy against cumulative megabytes), and prints the table. The model is chosen on validation rows
(data.val_fraction), never on the test split. The sanity ladder brackets the federated methods: `local` (each client
alone) and `centralized` (the pooled rows, the same optimizer steps).
"""
from __future__ import annotations
import argparse, importlib.util, json, os, shutil, sys, time
from pathlib import Path

os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')

# the methods of the comparison, each an `allocation.strategy` of the engine (all with the Bottleneck pattern where
# a pattern applies: the RGD warm-up of fedhello, rgd, straggler's common set)
METHODS = (
    'full',         # FedIT: every client trains every layer (ignores capacity; the upper bound)
    'fedhello',     # the Fed-HeLLo schedule: RGD-HLA warm-up, then FIM-HLA
    'rgd',          # RGD-HLA (Bottleneck) alone
    'fim',          # FIM-HLA alone
    'fedra',        # c_k layers uniformly at random
    'exclusive',    # only full-capacity clients train
    'straggler',    # every client trains the smallest capacity's layers
    'hetlora',      # rank baselines: every layer, rank by capacity class (equal parameter budget)
    'flexlora',
    'flora',
    'hierfedlora',  # only when fedhello_nb.hierfedlora exists
    'local',        # the sanity ladder: each client trains alone for its federated steps (the floor)
    'centralized',  # one model on the pooled rows, the same total optimizer steps (the ceiling)
)
REFERENCE = 'fedhello'   # the method every other one is compared with, seed by seed
PARTITIONS = ('iid', 'dirichlet', 'pathological')

# The default grid: 13 methods x 3 partitions x 3 seeds = 117 runs of the pretrained all-MiniLM-L6-v2 (rank 8 on
# query and value of its 6 blocks) on all of BANKING77 (77 intents; 10,003 training rows, 1,000 of its 3,080 test
# rows), 20 clients with 5 per round, 40 rounds of 8 local steps of 16 examples, evaluated every 5 rounds; the
# pathological split gives each client 15 classes. The compute it takes is measured and stated in the ranking
# chapter; the grid resumes, so it can be filled over several sittings.
DEFAULTS = dict(data='shared:banking77', model='all-MiniLM-L6-v2', rounds=40, clients=20, per_round=5,
                local_steps=8, batch_size=16, lr=1e-2, max_train=None, max_test=1000, max_length=32,
                alpha=0.5, classes_per_client=15, eval_every=5, seeds=[0, 1, 2], jobs=2, out='runs/compare_methods')
# --tiny: a random 4-block BERT on the project's own 13-class task, one method of each family (layer allocation,
# rank), 2 rounds: the whole grid machinery in seconds (the test suite runs it)
TINY = dict(data='default', model='tiny-bert', rounds=2, clients=6, per_round=3, local_steps=1, batch_size=8,
            lr=1e-2, max_train=150, max_test=60, max_length=32, alpha=0.5, classes_per_client=3, eval_every=1,
            seeds=[0, 1], methods=['fedhello', 'flora', 'local'], partitions=['iid', 'pathological'], jobs=1,
            out='runs/compare_methods_tiny')


def available_methods() -> list[str]:
    "Every method of the comparison that can run here (HierFedLoRA once `fedhello_nb.hierfedlora` exists)."
    have_hier = importlib.util.find_spec('fedhello_nb.hierfedlora') is not None
    return [m for m in METHODS if m != 'hierfedlora' or have_hier]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--tiny', action='store_true', help='tiny random model, default task, 2 rounds: for tests')
    p.add_argument('--methods', nargs='+', default=None, help=f'subset of {list(METHODS)} (default: all available)')
    p.add_argument('--partitions', nargs='+', default=None, choices=PARTITIONS, help=f'default {list(PARTITIONS)}')
    p.add_argument('--seeds', nargs='+', type=int, default=None, help=f"seeds (default {DEFAULTS['seeds']})")
    p.add_argument('--data', default=None, help="data.source: 'shared:<name>', a local folder/file, or 'default'")
    p.add_argument('--model', default=None, help='model.name')
    for name, typ, what in (('rounds', int, 'global rounds'), ('clients', int, 'K clients'),
                            ('per-round', int, 'clients per round'), ('local-steps', int, 'optimizer steps per client'),
                            ('batch-size', int, 'client batch size'), ('lr', float, 'AdamW learning rate'),
                            ('max-train', int, 'training rows used (seeded subset)'),
                            ('max-test', int, 'held-out rows evaluated'), ('max-length', int, 'tokens per text'),
                            ('alpha', float, 'Dirichlet concentration of the dirichlet partition'),
                            ('classes-per-client', int, 'M of the pathological partition'),
                            ('eval-every', int, 'evaluate every this many rounds')):
        p.add_argument(f'--{name}', type=typ, default=None, help=f'{what} (default {DEFAULTS[name.replace("-", "_")]})')
    p.add_argument('--set', action='append', default=[], metavar='SECTION.FIELD=VALUE',
                   help='any other configuration field, for every run (repeatable)')
    p.add_argument('--out', default=None, help=f"output folder (default {DEFAULTS['out']})")
    p.add_argument('--papermill', action='store_true', help='execute every run as the experiment notebook (papermill)')
    p.add_argument('--jobs', type=int, default=None,
                   help=f"runs at a time, separate processes with cores/jobs torch threads each (default {DEFAULTS['jobs']})")
    p.add_argument('--threads', type=int, default=None,
                   help="torch threads per run (default: torch's own); 1 is much faster on a machine busy with other work")
    p.add_argument('--collect-only', action='store_true', help='only gather what finished in --out (runs nothing)')
    p.add_argument('--quiet', action='store_true', help='no line per run')
    a = p.parse_args(argv)
    base = TINY if a.tiny else DEFAULTS
    for k, v in base.items():
        if getattr(a, k, None) is None: setattr(a, k, v)
    a.methods = a.methods or base.get('methods') or available_methods()
    a.partitions = a.partitions or base.get('partitions') or list(PARTITIONS)
    unknown = [m for m in a.methods if m not in METHODS]
    if unknown: p.error(f'unknown methods {unknown}; known: {list(METHODS)}')
    if 'hierfedlora' in a.methods and 'hierfedlora' not in available_methods():
        p.error('hierfedlora needs the module fedhello_nb.hierfedlora, which is not there yet')
    return a


def base_config(a) -> dict:
    "The nested configuration every run of the grid shares (strategy, partition scheme and seeds are set per run)."
    from fedhello_nb.config import parse_override, make_config
    cfg = {'model': {'name': a.model, 'max_length': a.max_length},
           'data': {'source': a.data, 'max_train': a.max_train, 'max_test': a.max_test},
           'partition': {'alpha': a.alpha, 'classes_per_client': a.classes_per_client},
           'clients': {'num_clients': a.clients, 'per_round': a.per_round},
           'allocation': {'pattern': 'bottleneck'},
           'train': {'rounds': a.rounds, 'local_steps': a.local_steps, 'batch_size': a.batch_size, 'lr': a.lr},
           'eval': {'every': a.eval_every},
           'output': {'quiet': True, 'checkpoint_every': 0}}
    if a.tiny: cfg['data']['proxy_size'] = 16
    for text in a.set:
        key, sep, value = text.partition('=')
        if not sep or '.' not in key: raise SystemExit(f'--set expects SECTION.FIELD=VALUE, got {text!r}')
        section, _, field = key.strip().partition('.')
        cfg.setdefault(section, {})[field] = parse_override(key.strip(), value.strip())[1]
    return make_config(cfg).to_dict()    # validated now, before any run starts


def seed_params(seed:int) -> dict:
    "One seed of the grid: it seeds the partition, the client selection and training, and the allocation draws."
    return {'train.seed': seed, 'partition.seed': seed, 'allocation.seed': seed}


def sweep_dict(a) -> dict:
    """The grid as a sweep of `fedhello_nb.batch`: the shared base configuration, and one parameter set per
    (seed, partition, method), seeds outermost, so that a grid cut short has whole seeds of every cell."""
    runs = [{'partition.scheme': p, 'allocation.strategy': m, **seed_params(s)}
            for s in a.seeds for p in a.partitions for m in a.methods]
    return {'name': 'compare_methods', 'base': base_config(a), 'runs': runs}


def run_grid(a) -> tuple['pd.DataFrame', 'pd.DataFrame']:
    "Run (or resume) the sweep; returns (results: one row per run, curves: one row per run and evaluated round)."
    import pandas as pd
    from fedhello_nb.batch import run_sweep
    from fedhello_nb.batch import collect
    sweep = Path(a.out)/'sweep'
    if a.collect_only: res = collect(sweep)     # what has finished so far; runs nothing
    else: res = run_sweep(sweep_dict(a), sweep, jobs=a.jobs, notebooks=a.papermill, quiet=a.quiet)
    r = res.runs
    col = lambda c: r[c] if c in r else float('nan')
    results = pd.DataFrame({'method': r['allocation.strategy'], 'partition': r['partition.scheme'],
                            'seed': r['train.seed'].astype(int), 'accuracy_at_best_val': col('accuracy_at_best_val'),
                            'best_val_round': col('best_val_round'), 'final_accuracy': r['accuracy'],
                            'final_macro_f1': r['macro_f1'], 'client_acc_p10': col('client_acc_p10'),
                            'client_acc_min': col('client_acc_min'), 'mb_total': col('bytes_total') / 1e6,
                            'rounds': r['rounds'], 'seconds': r['seconds'],
                            'status': r['status'], 'error': r['error'], 'run': r['run']})
    rounds = res.rounds
    if len(rounds):   # the ledger's running total of each run, over every round (evaluated or not)
        from fedhello_nb.engine import cumulative_bytes
        rounds = rounds.sort_values(['run', 'round'])
        rounds = rounds.assign(mb=pd.concat([cumulative_bytes(g) for _, g in rounds.groupby('run', sort=False)]) / 1e6)
    ev = rounds.dropna(subset=['accuracy']) if len(rounds) else rounds
    curves = pd.DataFrame({'method': ev['allocation.strategy'], 'partition': ev['partition.scheme'],
                           'seed': ev['train.seed'].astype(int), 'round': ev['round'].astype(int) + 1,
                           'accuracy': ev['accuracy'], 'mb': ev['mb']}) if len(ev) else \
             pd.DataFrame(columns=['method', 'partition', 'seed', 'round', 'accuracy', 'mb'])
    return results, curves


HEADLINE = 'accuracy_at_best_val'   # the figure methods are ranked by: test accuracy at the best validation round

def summarise(results, reference:str=REFERENCE) -> 'pd.DataFrame':
    """Per method and partition: mean and 95% t-interval over seeds of the test accuracy at the best validation
    round, of the final accuracy and of the clients' 10th percentile, and the paired difference with `reference`
    (seed by seed, same partition)."""
    import pandas as pd
    from fedhello_nb.metrics import mean_interval, paired_difference
    ok = results[results['status'] == 'ok']
    rows = []
    for (m, p), g in ok.groupby(['method', 'partition'], sort=False):
        row = {'method': m, 'partition': p, 'seeds': len(g), 'seconds_mean': float(g['seconds'].mean()),
               'mb_mean': float(g['mb_total'].mean())}
        for c, name in ((HEADLINE, 'acc'), ('final_accuracy', 'final'), ('client_acc_p10', 'p10')):
            i = mean_interval(g[c])
            row.update({f'{name}_mean': i['mean'], f'{name}_ci95': i['half']})
        ref = ok[(ok['method'] == reference) & (ok['partition'] == p)].set_index('seed')[HEADLINE]
        mine = g.set_index('seed')[HEADLINE]
        both = sorted(set(mine.index) & set(ref.index))
        d = paired_difference(mine[both].to_numpy(), ref[both].to_numpy()) if both and m != reference else None
        row.update({f'diff_vs_{reference}': d['mean'] if d else float('nan'),
                    f'diff_vs_{reference}_ci95': d['half'] if d else float('nan')})
        rows.append(row)
    return pd.DataFrame(rows)


def write_results(out:Path, results, curves):
    "results.csv, curves.csv and summary.csv under `out`."
    out.mkdir(parents=True, exist_ok=True)
    results.to_csv(out/'results.csv', index=False)
    curves.to_csv(out/'curves.csv', index=False)
    summarise(results).to_csv(out/'summary.csv', index=False)


def _style(j:int) -> tuple:
    "Colour and hatch (dashes in line plots) of the j-th method: ten tab10 colours, then the same hatched."
    import matplotlib.pyplot as plt
    return plt.get_cmap('tab10')(j % 10), ('//' if j >= 10 else None)


def plot_final(results, path:Path, title:str=''):
    "Test accuracy at the best validation round per method, grouped by partition: mean, 95% interval, seeds."
    import matplotlib; matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    import numpy as np
    from fedhello_nb.metrics import mean_interval
    results = results[(results['status'] == 'ok') & results[HEADLINE].notna()]
    methods, parts = list(dict.fromkeys(results['method'])), list(dict.fromkeys(results['partition']))
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(methods) * len(parts) / 2), 4))
    width = 0.8 / max(len(methods), 1)
    for j, m in enumerate(methods):
        color, hatch = _style(j)
        for i, p in enumerate(parts):
            acc = results[(results['method'] == m) & (results['partition'] == p)][HEADLINE].to_numpy()
            if not len(acc): continue
            x, ci = i - 0.4 + width * (j + 0.5), mean_interval(acc)
            ax.bar(x, ci['mean'], width * 0.9, color=color, hatch=hatch, label=m if i == 0 else None,
                   yerr=None if np.isnan(ci['half']) else ci['half'], capsize=2, error_kw={'lw': 0.8})
            ax.scatter(np.full(len(acc), x), acc, s=6, color='k', zorder=3)
    ax.set_xticks(range(len(parts)), parts)
    ax.set_ylabel('test accuracy at the best validation round'); ax.grid(axis='y', alpha=.3)
    ax.set_title((title + '\n' if title else '') + 'mean over seeds (bar), 95% t-interval (whisker), seeds (dots)', fontsize=9)
    ax.legend(fontsize=7, ncol=2, loc='upper left', bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout(); fig.savefig(path, dpi=110); plt.close(fig)


def plot_curves(curves, path:Path, title:str='', x:str='round'):
    """Test accuracy per round (`x='round'`) or against the megabytes communicated so far (`x='mb'`, the ledger's
    bytes down and up), one panel per partition, one line per method: mean over seeds at each round, band: min-max."""
    import matplotlib; matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    import numpy as np
    parts, methods = list(dict.fromkeys(curves['partition'])), list(dict.fromkeys(curves['method']))
    fig, axes = plt.subplots(1, len(parts), figsize=(4.2 * len(parts), 3.4), sharey=True, squeeze=False)
    from matplotlib.ticker import MaxNLocator
    for ax, p in zip(axes[0], parts):
        for j, m in enumerate(methods):
            c = curves[(curves['partition'] == p) & (curves['method'] == m)]
            if not len(c): continue
            g = c.groupby('round')
            xs, acc = g[x].mean(), g['accuracy']
            color, hatch = _style(j)
            ax.plot(xs.values, acc.mean().values, color=color, lw=1.2, ls='--' if hatch else '-', label=m)
            ax.fill_between(xs.values, acc.min().values, acc.max().values, color=color, alpha=.12)
        ax.set_title(p); ax.grid(alpha=.3)
        if x == 'round': ax.set_xlabel('round'); ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        else: ax.set_xlabel('MB sent down and up (cumulative, mean over seeds)')
    axes[0][0].set_ylabel('test accuracy')
    if title: fig.suptitle(title, fontsize=9)
    axes[0][-1].legend(fontsize=7, loc='upper left', bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout(); fig.savefig(path, dpi=110); plt.close(fig)


def table_text(results, reference:str=REFERENCE) -> str:
    "The printed table: per method and partition, mean ± 95% interval of the headline accuracy, then the paired difference with the reference."
    s = summarise(results, reference)
    f = lambda m, h: f"{m:.4f} ± {h:.4f}" if h == h else f"{m:.4f}"
    s['cell'] = [f(r.acc_mean, r.acc_ci95) + ('' if r.method == reference else
                 ' (Δ ' + f(getattr(r, f'diff_vs_{reference}'), getattr(r, f'diff_vs_{reference}_ci95')).replace('Δ -', 'Δ -') + ')')
                 for r in s.itertuples()]
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
    if a.threads:
        os.environ['OMP_NUM_THREADS'] = str(a.threads)     # papermill kernels inherit it
        import torch
        torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    results, curves = run_grid(a)
    write_results(out, results, curves)
    title = f'{a.model} on {a.data}'
    plot_final(results, out/'final_accuracy.png', title)
    plot_curves(curves, out/'accuracy_per_round.png', title)
    plot_curves(curves, out/'accuracy_vs_bytes.png', title, x='mb')
    with pd.option_context('display.width', 200, 'display.max_columns', 20, 'display.max_rows', 500):
        print('\nresults (one row per run):')
        print(results.drop(columns=['error', 'run']).to_string(index=False))
        for r in results[results['status'] == 'failed'].itertuples():
            print(f'FAILED {r.method}/{r.partition}/seed {r.seed}: {r.error}')
        print(f'\ntest accuracy at the best validation round: mean ± 95% t-interval over seeds '
              f'(Δ: paired difference with {REFERENCE}, seed by seed, ± its 95% interval):')
        print(table_text(results))
    ok = int((results['status'] == 'ok').sum())
    print(f'\n{ok} of {n} runs ok ({time.perf_counter() - t0:.0f} s this call); tables and plots in {out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
