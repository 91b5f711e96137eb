"""Per-round metrics of a tiny run of every strategy, to check that a refactor of the round changes no number.

Writes one JSON file with, for each value of `allocation.strategy`, the round rows and the client rows of a
3-round run on a tiny random BERT (4 clients, 3 per round, three capacity classes, a 20% failure rate, so that
selection, failures, allocation and aggregation all matter). Wall-clock seconds and the free-text `error` column
are left out; everything else is compared exactly, client rows by (round, client).

    # the tree before the change, in its own folder, with its own package first on the path
    git worktree add /tmp/before <commit>
    (cd /tmp/before && PYTHONPATH=. python /path/to/bench/round_metrics.py --out /tmp/before.json)
    python bench/round_metrics.py --out /tmp/after.json
    python bench/round_metrics.py --compare /tmp/before.json /tmp/after.json
"""
from __future__ import annotations
import argparse, json, math, os, sys, tempfile
os.environ.setdefault('HF_HUB_OFFLINE', '1')

TINY = dict(model={'name': 'tiny-bert'}, data={'max_train': 300, 'max_test': 60},
            clients={'num_clients': 4, 'per_round': 3, 'capacities': [1, 2, 4], 'fractions': [0.5, 0.25, 0.25],
                     'failure_rate': 0.2},
            train={'rounds': 3, 'local_steps': 2, 'batch_size': 8}, output={'quiet': True})
SKIP = ('seconds', 'error')


def run_all(strategies, work) -> dict:
    "strategy -> {'rounds': [...], 'clients': [...]} of a tiny run each."
    from fedhello_nb.config import make_config
    from fedhello_nb.engine import run_experiment
    out = {}
    for s in strategies:
        r = run_experiment(make_config(TINY, **{'allocation.strategy': s, 'output.dir': os.path.join(work, s)}))
        keep = lambda df: df[[c for c in df.columns if c not in SKIP]].to_dict('records')
        out[s] = {'rounds': keep(r.rounds), 'clients': keep(r.clients)}
    return out


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float): return a == b or (math.isnan(a) and math.isnan(b))
    return a == b


def differences(a:dict, b:dict) -> dict:
    "strategy -> list of (table, row, column, before, after) where the two results differ."
    out = {}
    for s in sorted(set(a) | set(b)):
        if s not in a or s not in b: out[s] = [('strategy', None, None, s in a, s in b)]; continue
        diffs = []
        for tab in ('rounds', 'clients'):
            key = lambda r: (r['round'], r.get('client', -1))
            ra, rb = sorted(a[s][tab], key=key), sorted(b[s][tab], key=key)
            if len(ra) != len(rb): diffs.append((tab, None, 'rows', len(ra), len(rb))); continue
            for i, (x, y) in enumerate(zip(ra, rb)):
                diffs += [(tab, i, k, x.get(k), y.get(k)) for k in sorted(set(x) | set(y)) if not _same(x.get(k), y.get(k))]
        out[s] = diffs
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--out', help='write the metrics of every strategy (or --strategies) to this JSON file')
    ap.add_argument('--strategies', nargs='*', help='default: every value of allocation.strategy')
    ap.add_argument('--compare', nargs=2, metavar=('BEFORE', 'AFTER'), help='compare two files written by --out')
    args = ap.parse_args(argv)
    if not args.out and not args.compare: ap.error('give --out FILE or --compare BEFORE AFTER')
    if args.out:
        from fedhello_nb.config import ALL_STRATEGIES
        with tempfile.TemporaryDirectory() as work: res = run_all(args.strategies or list(ALL_STRATEGIES), work)
        with open(args.out, 'w') as f: json.dump(res, f, default=str)
        print(f'wrote {args.out}: {len(res)} strategies')
    if args.compare:
        a, b = (json.load(open(p)) for p in args.compare)
        diffs = differences(a, b)
        for s, d in diffs.items(): print(f'{s:12s} ' + ('identical' if not d else f'{len(d)} differences, e.g. {d[:3]}'))
        return diffs


if __name__ == '__main__':
    main()
