"""The experiment template through papermill, a resumable sweep with a failing run, and the report on it."""
import json, os
from pathlib import Path
import pandas as pd
import pytest
import papermill as pm
from fedhello_nb.batch import (run_template, run_sweep, run_report, collect, load_sweep, run_id, EXECUTED, RUN_RECORD,
                               RESULTS_DIR)

os.environ.setdefault('HF_HUB_OFFLINE', '1')
TINY = {'model.name': 'tiny-bert', 'data.max_train': 160, 'data.max_test': 60, 'clients.num_clients': 4,
        'clients.per_round': 2, 'allocation.strategy': 'rgd', 'train.rounds': 2, 'train.local_steps': 1,
        'train.batch_size': 8, 'output.checkpoint_every': 0}
SWEEP = {'name': 'three', 'base': TINY,
         'runs': [{'allocation.strategy': 'rgd'}, {'allocation.strategy': 'full'},
                  {'data.source': 'no/such/folder'}]}      # fails on purpose, inside its run


def test_template_papermill(tmp_path):
    out = run_template(tmp_path/'run', tmp_path/'run.ipynb', overrides={**TINY, 'name': 'tiny'})
    for f in ('rounds.csv', 'clients.csv', 'summary.json', 'config.json', 'config.yaml', 'metric.png', 'capacity.csv'):
        assert (out/f).is_file(), f
    summary = json.loads((out/'summary.json').read_text())
    assert summary['name'] == 'tiny' and summary['rounds'] == 2
    nb = json.loads((tmp_path/'run.ipynb').read_text())
    assert any('injected-parameters' in c['metadata'].get('tags', []) for c in nb['cells'])


def test_template_refuses_bad_override(tmp_path):
    with pytest.raises(pm.PapermillExecutionError) as e:
        run_template(tmp_path/'run', tmp_path/'run.ipynb', overrides={'train.lrr': 0.1})
    assert e.value.ename == 'FedHelloError' and 'invalid train.lrr=0.1: unknown field' in e.value.evalue
    assert not (tmp_path/'run').exists()      # nothing ran


@pytest.fixture(scope='module')
def sweep(tmp_path_factory):
    d = tmp_path_factory.mktemp('sweep')/'three'
    return d, run_sweep(SWEEP, d, jobs=2, quiet=True)


def test_sweep_records_failure_and_goes_on(sweep):
    d, res = sweep
    assert res.runs['status'].tolist() == ['ok', 'ok', 'failed']
    assert not res.ok
    assert 'FedHelloError' in res.failed['error'].iloc[0] and 'no/such/folder' in res.failed['error'].iloc[0]
    for rid in res.runs['run']:
        assert (d/rid/EXECUTED).is_file() and (d/rid/RUN_RECORD).is_file()
    assert (d/res.runs['run'][2]/'error.txt').is_file()
    # the collected tables: parameters as columns, one row per run / per run and round
    runs = pd.read_csv(d/'runs.csv')
    assert runs[['allocation.strategy', 'data.source']].values.tolist() == [
        ['rgd', 'default'], ['full', 'default'], ['rgd', 'no/such/folder']]
    assert runs['accuracy'].iloc[:2].notna().all() and pd.isna(runs['accuracy'].iloc[2])
    rounds = pd.read_csv(d/'rounds.csv')
    assert len(rounds) == 4 and set(rounds['allocation.strategy']) == {'rgd', 'full'}


def test_sweep_rerun_skips_finished(sweep):
    d, res = sweep
    records = {rid: (d/rid/RUN_RECORD).read_text() for rid in res.runs['run']}
    again = run_sweep(SWEEP, d, quiet=True)
    assert again.runs['status'].tolist() == ['ok', 'ok', 'failed']
    ids = res.runs['run'].tolist()
    assert [(d/r/RUN_RECORD).read_text() == records[r] for r in ids] == [True, True, False]  # only the failed one ran


def test_report_on_sweep(sweep):
    d, res = sweep
    out = run_report(d)
    assert out == d.absolute()/'report.ipynb' and out.is_file()
    for f in ('metric_per_round.png', 'final_accuracy_vs_skew.png', 'final_accuracy.csv'):
        assert (d/'report'/f).is_file(), f
    table = pd.read_csv(d/'report'/'final_accuracy.csv')
    assert sorted(table['method']) == ['full', 'rgd']      # the failed run is left out of the comparison
    assert 'no/such/folder' in out.read_text()                # ... but listed with its error


def test_sweep_file_and_validation(tmp_path):
    f = tmp_path/'grid.yaml'
    f.write_text('name: g\nbase: {train: {rounds: 2}}\ngrid:\n  partition.alpha: [0.1, 1.0]\n  train.seed: [0, 1]\n')
    spec = load_sweep(f)
    assert len(spec) == 4 and spec.config(3).partition.alpha == 1.0 and spec.config(3).train.seed == 1
    f.write_text('grid:\n  train.lr: [0.1, -1]\n')
    with pytest.raises(ValueError, match=r'invalid train.lr=-1.*in parameter set 1'): load_sweep(f)
