"""bench/compare_methods.py: the tiny grid end to end, and the default grid's mapping onto a batch sweep."""
import os
os.environ.setdefault('HF_HUB_OFFLINE', '1')
import importlib.util, sys
from pathlib import Path
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location('compare_methods', ROOT/'bench'/'compare_methods.py')
cm = importlib.util.module_from_spec(spec)
spec.loader.exec_module(cm)


def test_tiny_grid_end_to_end(tmp_path, capsys):
    assert cm.main(['--tiny', '--out', str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    res = pd.read_csv(tmp_path/'results.csv')
    assert len(res) == 3 * 2 * 2                                # fedhello, flora, local x iid, pathological x 2 seeds
    assert set(res['method']) == {'fedhello', 'flora', 'local'}
    assert set(res['partition']) == {'iid', 'pathological'} and set(res['seed']) == {0, 1}
    assert (res['status'] == 'ok').all(), res[['method', 'partition', 'error']]
    for c in ('final_accuracy', 'accuracy_at_best_val', 'client_acc_p10', 'client_acc_min'):
        assert res[c].between(0, 1).all(), c
    assert (res['client_acc_min'] <= res['client_acc_p10']).all()
    assert res['best_val_round'].isin([0, 1]).all()
    assert (res['rounds'] == 2).all() and (res['seconds'] > 0).all()
    curves = pd.read_csv(tmp_path/'curves.csv')
    assert len(curves) == 12 * 2 and sorted(set(curves['round'])) == [1, 2]
    # megabytes so far: positive, growing round by round in every run, and equal to the run's own rounds.csv
    assert (curves['mb'] > 0).all()
    assert (curves.sort_values('round').groupby(['method', 'partition', 'seed'])['mb'].diff().dropna() > 0).all()
    one = res.iloc[0]
    rr = pd.read_csv(tmp_path/'sweep'/one['run']/'results'/'rounds.csv')
    mine = curves[(curves['method'] == one['method']) & (curves['partition'] == one['partition']) & (curves['seed'] == one['seed'])]
    assert abs(mine.sort_values('round')['mb'].iloc[-1] - (rr['bytes_down'] + rr['bytes_up']).sum() / 1e6) < 1e-9
    assert abs(one['mb_total'] - (rr['bytes_down'] + rr['bytes_up']).sum() / 1e6) < 1e-9
    summary = pd.read_csv(tmp_path/'summary.csv')
    assert len(summary) == 6 and (summary['seeds'] == 2).all()
    assert summary['acc_ci95'].notna().all() and (summary['acc_ci95'] >= 0).all()
    # the paired difference with Fed-HeLLo, recomputed by hand from the per-run table
    ref = res[res['method'] == 'fedhello'].set_index(['partition', 'seed'])['accuracy_at_best_val']
    for r in summary[summary['method'] != 'fedhello'].itertuples():
        mine = res[(res['method'] == r.method) & (res['partition'] == r.partition)].set_index(['partition', 'seed'])
        diff = (mine['accuracy_at_best_val'] - ref.loc[mine.index]).to_numpy()
        assert abs(r.diff_vs_fedhello - diff.mean()) < 1e-12
    assert summary[summary['method'] == 'fedhello']['diff_vs_fedhello'].isna().all()
    for png in ('final_accuracy.png', 'accuracy_per_round.png', 'accuracy_vs_bytes.png'):
        assert (tmp_path/png).stat().st_size > 1000
    assert 'best validation round' in printed and 'pathological' in printed and 'Δ' in printed
    # a second call finds every run finished and repeats none; --collect-only gathers the same table
    assert cm.main(['--tiny', '--out', str(tmp_path), '--quiet']) == 0
    assert cm.main(['--tiny', '--out', str(tmp_path), '--collect-only', '--quiet']) == 0
    again = pd.read_csv(tmp_path/'results.csv')
    pd.testing.assert_frame_equal(res.drop(columns='seconds'), again.drop(columns='seconds'))


def test_default_grid_is_a_sweep():
    from fedhello_nb.batch import load_sweep
    a = cm.parse_args([])
    assert a.data == 'shared:banking77' and a.seeds == [0, 1, 2]
    assert set(a.methods) >= {'full', 'fedhello', 'rgd', 'fim', 'fedra', 'exclusive', 'straggler',
                              'hetlora', 'flexlora', 'flora', 'local', 'centralized'}
    assert a.max_train is None and a.classes_per_client == 15      # all of BANKING77, 15 classes per client
    sweep = load_sweep(cm.sweep_dict(a))                   # every run's configuration validates
    assert len(sweep) == len(a.methods) * 3 * 3
    cfgs = [sweep.config(i) for i in range(len(sweep))]
    # every cell: the same settings but for the method, the partition and the seed
    assert {c.allocation.strategy for c in cfgs} == set(a.methods)
    assert {c.partition.scheme for c in cfgs} == {'iid', 'dirichlet', 'pathological'}
    assert all(c.train.seed == c.partition.seed == c.allocation.seed for c in cfgs)
    per_cell = ('name', 'allocation.strategy', 'partition.scheme', 'train.seed', 'partition.seed', 'allocation.seed')
    shared = lambda c: {k: v for k, v in c.flat().items() if k not in per_cell}
    assert all(shared(c) == shared(cfgs[0]) for c in cfgs)
    assert {(c.train.rounds, c.train.lr, c.data.source) for c in cfgs} == {(a.rounds, a.lr, a.data)}


def test_bad_arguments():
    with pytest.raises(SystemExit): cm.parse_args(['--methods', 'fedavg'])
    with pytest.raises(SystemExit): cm.parse_args(['--partitions', 'quantity'])
    with pytest.raises(SystemExit): cm.main(['--tiny', '--set', 'rounds=3'])
