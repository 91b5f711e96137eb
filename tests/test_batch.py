"""The experiment template through papermill, a resumable sweep with a failing run, the report on it, and the
wheel that carries the template and the report to an installed package."""
import json, os, shutil, subprocess, sys, zipfile
from pathlib import Path
import pandas as pd
import pytest
import papermill as pm
from fedhello_nb.batch import (run_template, run_sweep, run_report, collect, load_sweep, run_id, EXECUTED, RUN_RECORD,
                               RESULTS_DIR, TEMPLATES, KERNEL, notebook_path)

os.environ.setdefault('HF_HUB_OFFLINE', '1')
TINY = {'model.name': 'tiny-bert', 'data.max_train': 160, 'data.max_test': 60, 'clients.num_clients': 4,
        'clients.per_round': 2, 'allocation.strategy': 'rgd', 'train.rounds': 2, 'train.local_steps': 1,
        'train.batch_size': 8, 'output.checkpoint_every': 0}
# partition.alpha (0.5 by default) is the report's skew axis: rgd at two skews, full at one
SWEEP = {'name': 'four', 'base': {**TINY, 'partition.scheme': 'dirichlet'},
         'runs': [{'allocation.strategy': 'rgd'}, {'allocation.strategy': 'full'},
                  {'data.source': 'no/such/folder'},      # fails on purpose, inside its run
                  {'allocation.strategy': 'rgd', 'partition.alpha': 10.0}]}
ROOT = Path(__file__).resolve().parent.parent


def test_template_papermill(tmp_path):
    # the parameters as `papermill -p resume false -p overrides "{...}"` passes them: strings, which the template reads
    # (`bool('false')` would resume); run_template's typed values are exercised by the sweeps below
    import yaml
    out = tmp_path/'run'
    pm.execute_notebook(str(notebook_path('experiment')), str(tmp_path/'run.ipynb'), kernel_name=KERNEL, progress_bar=False,
                        parameters={'out_dir': str(out), 'resume': 'false',
                                    'overrides': yaml.safe_dump({**TINY, 'name': 'tiny'}, default_flow_style=True)})
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
    d = tmp_path_factory.mktemp('sweep')/'four'
    return d, run_sweep(SWEEP, d, jobs=2, quiet=True)


def test_sweep_records_failure_and_goes_on(sweep):
    d, res = sweep
    assert res.runs['status'].tolist() == ['ok', 'ok', 'failed', 'ok']
    assert not res.ok
    assert 'FedHelloError' in res.failed['error'].iloc[0] and 'no/such/folder' in res.failed['error'].iloc[0]
    for rid in res.runs['run']:
        assert (d/rid/EXECUTED).is_file() and (d/rid/RUN_RECORD).is_file()
    assert (d/res.runs['run'][2]/'error.txt').is_file()
    # the collected tables: parameters as columns, one row per run / per run and round
    runs = pd.read_csv(d/'runs.csv')
    assert runs[['allocation.strategy', 'data.source', 'partition.alpha']].values.tolist() == [
        ['rgd', 'default', 0.5], ['full', 'default', 0.5], ['rgd', 'no/such/folder', 0.5], ['rgd', 'default', 10.0]]
    assert runs['accuracy'].notna().tolist() == [True, True, False, True]
    rounds = pd.read_csv(d/'rounds.csv')
    assert len(rounds) == 6 and set(rounds['allocation.strategy']) == {'rgd', 'full'}


def test_sweep_rerun_skips_finished(sweep):
    d, res = sweep
    records = {rid: (d/rid/RUN_RECORD).read_text() for rid in res.runs['run']}
    again = run_sweep(SWEEP, d, quiet=True)
    assert again.runs['status'].tolist() == ['ok', 'ok', 'failed', 'ok']
    ids = res.runs['run'].tolist()
    assert [(d/r/RUN_RECORD).read_text() == records[r] for r in ids] == [True, True, False, True]  # only the failed one ran


def printed_text(notebook:Path) -> str:
    "What the cells of an executed notebook printed (stream outputs), without their source."
    cells = json.loads(notebook.read_text())['cells']
    return ''.join(''.join(o.get('text', '')) for c in cells for o in c.get('outputs', []) if o['output_type'] == 'stream')


def test_report_on_sweep(sweep):
    d, res = sweep
    out = run_report(d)
    assert out == d.absolute()/'report.ipynb' and out.is_file()
    printed = printed_text(out)
    assert "methods: ['full', 'rgd'] | skew axis: partition.alpha" in printed
    # every figure, the memory plot included: its inputs (clients.csv, config.json of each run) are all there
    assert 'memory estimates skipped' not in printed
    assert sorted(p.name for p in (d/'report').glob('*.png')) == [
        'final_accuracy_vs_skew.png', 'memory_vs_metric.png', 'metric_per_round.png']
    # the final metric against skew: one row per method, one column per alpha (full ran at 0.5 only)
    table = pd.read_csv(d/'report'/'final_accuracy.csv', index_col='method')
    assert sorted(table.index) == ['full', 'rgd'] and list(table.columns) == ['0.5', '10.0']
    assert table.loc['rgd'].notna().all() and table.loc['full'].notna().tolist() == [True, False]
    # the failed run is left out of the comparison, but listed with its error
    mem = pd.read_csv(d/'report'/'memory.csv')
    assert len(mem) == 3 and (mem['mean_client_memory'] > 0).all()
    by = mem.groupby('method')['mean_client_memory'].max()
    assert by['rgd'] <= by['full']                          # training every block is the most a client needs
    assert 'no/such/folder' in out.read_text()


def test_sweep_file_and_validation(tmp_path):
    f = tmp_path/'grid.yaml'
    f.write_text('name: g\nbase: {train: {rounds: 2}}\ngrid:\n  partition.alpha: [0.1, 1.0]\n  train.seed: [0, 1]\n')
    spec = load_sweep(f)
    assert len(spec) == 4 and spec.config(3).partition.alpha == 1.0 and spec.config(3).train.seed == 1
    f.write_text('grid:\n  train.lr: [0.1, -1]\n')
    with pytest.raises(ValueError, match=r'invalid train.lr=-1.*in parameter set 1'): load_sweep(f)


def test_wheel_ships_templates(tmp_path):
    """`pip install fedhello-nb` has no nbs/: the wheel carries the template and the report in the package, and
    `notebook_path` finds them there when no checkout is next to the package."""
    pytest.importorskip('setuptools', reason='building a wheel without build isolation needs setuptools in the venv')
    src = tmp_path/'src'      # a copy, so that the build leaves no build/ or egg-info in the checkout
    skip = shutil.ignore_patterns('__pycache__', '.ipynb_checkpoints', '*.pyc')
    for name in ('fedhello_nb', 'nbs'): shutil.copytree(ROOT/name, src/name, ignore=skip)
    for name in ('pyproject.toml', 'README.md'): shutil.copy(ROOT/name, src/name)
    r = subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation', '-q',
                        '-w', str(tmp_path/'dist'), str(src)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    wheel, = (tmp_path/'dist').glob('fedhello_nb-*.whl')
    with zipfile.ZipFile(wheel) as z:
        shipped = sorted(n for n in z.namelist() if n.startswith(f'fedhello_nb/{TEMPLATES}/'))
        assert shipped == [f'fedhello_nb/{TEMPLATES}/experiment.ipynb', f'fedhello_nb/{TEMPLATES}/report.ipynb']
        for n in shipped: assert z.read(n) == (ROOT/'nbs'/Path(n).name).read_bytes()   # the notebooks themselves
        z.extractall(tmp_path/'site')
    # the unpacked wheel first on the path, run from a folder with no checkout: the installed copies are found
    code = "from fedhello_nb.batch import notebook_path as p; print(p('experiment')); print(p('report'))"
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=tmp_path, timeout=120,
                       env={**os.environ, 'PYTHONPATH': str(tmp_path/'site')})
    assert r.returncode == 0, r.stderr
    site = (tmp_path/'site'/'fedhello_nb'/TEMPLATES).resolve()
    assert r.stdout.split() == [str(site/'experiment.ipynb'), str(site/'report.ipynb')]
