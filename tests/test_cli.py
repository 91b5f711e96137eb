"""The `fedhello` console script: exit codes and messages scripts can rely on, and a tiny run end to end."""
import json, os, subprocess, sys
from pathlib import Path
import pytest
import yaml

FEDHELLO = str(Path(sys.executable).parent/'fedhello')
TINY = ['-p', 'model.name', 'tiny-bert', '-p', 'data.max_train', '160', '-p', 'data.max_test', '60',
        '-p', 'clients.num_clients', '4', '-p', 'clients.per_round', '2', '-p', 'allocation.strategy', 'rgd',
        '-p', 'train.rounds', '2', '-p', 'train.local_steps', '1', '-p', 'train.batch_size', '8']


def fedhello(*args, cwd=None):
    env = {**os.environ, 'HF_HUB_OFFLINE': '1', 'MPLBACKEND': 'Agg'}
    return subprocess.run([FEDHELLO, *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


def test_bad_parameter_name():
    r = fedhello('run', '-p', 'train.lrr', '0.1')
    assert r.returncode == 2 and r.stdout == ''
    assert r.stderr.startswith('fedhello: error: invalid train.lrr=0.1: unknown field; known fields: ')


def test_bad_value():
    r = fedhello('run', '-p', 'train.lr', '-1')
    assert r.returncode == 2 and r.stdout == ''
    assert r.stderr.startswith('fedhello: error: invalid train.lr=-1') and 'greater than 0' in r.stderr
    r = fedhello('config', '-p', 'allocation.strategy', 'fedhell')
    assert r.returncode == 2 and "invalid allocation.strategy='fedhell'" in r.stderr


def test_usage_and_missing_files(tmp_path):
    assert fedhello().returncode == 2                                  # no command
    assert fedhello('run', '-p', 'train.lr').returncode == 2           # -p needs KEY VALUE
    r = fedhello('run', tmp_path/'none.yaml')
    assert r.returncode == 2 and 'invalid config=' in r.stderr
    r = fedhello('sweep', tmp_path/'none.yaml')
    assert r.returncode == 2 and 'invalid sweep=' in r.stderr
    r = fedhello('report', tmp_path)
    assert r.returncode == 2 and 'invalid sweep_dir=' in r.stderr


def test_config_prints_valid_yaml(tmp_path):
    r = fedhello('config', '-p', 'train.rounds', '7', '-p', 'clients.fractions', '[0.6, 0.3, 0.1]')
    assert r.returncode == 0
    d = yaml.safe_load(r.stdout)
    assert d['train']['rounds'] == 7 and d['clients']['fractions'] == [0.6, 0.3, 0.1]
    (tmp_path/'c.yaml').write_text(r.stdout)
    r2 = fedhello('config', tmp_path/'c.yaml', '-p', 'train.lr', '0.01')
    assert r2.returncode == 0 and yaml.safe_load(r2.stdout)['train']['rounds'] == 7
    r3 = fedhello('config', '--fields')
    assert r3.returncode == 0 and 'allocation.strategy' in r3.stdout


def test_run_tiny(tmp_path):
    out = tmp_path/'r'
    r = fedhello('run', *TINY, '--out', out, '--quiet')
    assert r.returncode == 0, r.stderr
    assert f'results: {out}/' in r.stdout and 'final accuracy: ' in r.stdout
    for f in ('rounds.csv', 'clients.csv', 'metric.png', 'trainers.png', 'config.json', 'summary.json'):
        assert (out/f).is_file(), f
    assert json.loads((out/'summary.json').read_text())['rounds'] == 2
    # the same finished run again: nothing to do, exit 0; another configuration into the folder: refused, exit 2
    again = fedhello('run', *TINY, '--out', out, '--quiet')
    assert again.returncode == 0 and 'nothing to do' in again.stderr and 'final accuracy: ' in again.stdout
    other = fedhello('run', *TINY, '-p', 'train.lr', '0.5', '--out', out, '--quiet')
    assert other.returncode == 2 and 'holds the results of another run' in other.stderr and '--resume' in other.stderr
    # a config file plus overrides
    (tmp_path/'c.yaml').write_text(fedhello('config', *TINY).stdout)
    r = fedhello('run', tmp_path/'c.yaml', '-p', 'train.rounds', '1', '--out', tmp_path/'r2', '--quiet')
    assert r.returncode == 0 and 'after 1 rounds' in r.stdout


PEFT_ONLY = """
import json, sys
import pandas as pd, torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from peft import PeftModel
export, run = sys.argv[1], sys.argv[2]
man = json.load(open(export + '/fedhello_export.json'))
base = AutoModelForSequenceClassification.from_pretrained(export + '/base_model')
model = PeftModel.from_pretrained(base, export).eval()
pred = pd.read_csv(run + '/predictions.csv')
enc = AutoTokenizer.from_pretrained(export)(pred['text'].tolist(), truncation=True, max_length=man['max_length'],
                                            padding=True, return_tensors='pt')
with torch.no_grad(): logits = model(**enc).logits
assert 'fedhello_nb' not in sys.modules
loss = torch.nn.functional.cross_entropy(logits, torch.tensor(pred['label'].to_numpy()), reduction='none')
print(json.dumps({'agree': float((logits.argmax(-1).numpy() == pred['prediction'].to_numpy()).mean()),
                  'max_loss_diff': float((loss.numpy() - pred['loss'].to_numpy()).__abs__().max())}))
"""


def test_export_then_predict_and_reload_with_peft_alone(tmp_path):
    """`fedhello export` of a finished run, reloaded by a process that has only transformers and peft: the run's own
    test predictions; `fedhello predict` on the export."""
    run, exp = tmp_path/'run', tmp_path/'export'
    assert fedhello('run', *TINY, '-p', 'train.rounds', '1', '--out', run, '--quiet').returncode == 0
    r = fedhello('export', run, '--to', exp, '--which', 'final')
    assert r.returncode == 0 and r.stdout.startswith('exported final (round 0 as in rounds.csv'), r.stdout + r.stderr
    code = subprocess.run([sys.executable, '-c', PEFT_ONLY, str(exp), str(run)], capture_output=True, text=True,
                          env={**os.environ, 'HF_HUB_OFFLINE': '1'}, timeout=300)
    assert code.returncode == 0, code.stderr
    got = json.loads(code.stdout.strip().splitlines()[-1])
    assert got['agree'] == 1.0 and got['max_loss_diff'] < 1e-4, got
    p = fedhello('predict', exp, 'what is my balance', '--json')
    assert p.returncode == 0, p.stderr
    row = json.loads(p.stdout)
    assert row['input'] == 'what is my balance' and row['label'] in json.loads((exp/'fedhello_export.json').read_text())['label_names']
    # bad input (exit 2, one line, before a model loads) is checked in-process in the command-line chapter


def test_sweep_exit_code_on_failure(tmp_path):
    spec = {'name': 's', 'base': {'model.name': 'tiny-bert', 'data.max_train': 160, 'data.max_test': 60,
                                  'clients': {'num_clients': 4, 'per_round': 2}, 'train': {'rounds': 1, 'local_steps': 1}},
            'runs': [{'allocation.strategy': 'rgd'}, {'data.source': 'no/such/folder'}]}
    (tmp_path/'s.yaml').write_text(yaml.safe_dump(spec))
    r = fedhello('sweep', tmp_path/'s.yaml', '--direct', '--out', tmp_path/'out', '--quiet')
    assert r.returncode == 1
    assert '1/2 runs ok' in r.stdout and 'failed: source-no-such-folder' in r.stderr
    head = next(l for l in r.stdout.splitlines() if 'acc@best_val' in l)   # the summary table: the one finished run
    assert head.split()[:3] == ['allocation.strategy', 'data.source', 'runs'] and 'rgd' in r.stdout.splitlines()[-1]
    assert (tmp_path/'out'/'runs.csv').is_file()


def test_exit_codes_before_and_after_start(tmp_path, monkeypatch, capsys):
    """2 only while nothing trained; once the federation is built any error is a failed run (1), FedHelloError too."""
    import fedhello_nb.engine as engine
    from fedhello_nb.cli import main
    from fedhello_nb.validate import FedHelloError
    # a data source that does not exist is found while the federation is built: bad input, exit 2
    assert main(['run', *TINY, '-p', 'data.source', 'no/such/folder', '--out', str(tmp_path/'a'), '--quiet']) == 2
    assert capsys.readouterr().err.startswith("fedhello: error: invalid data.source='no/such/folder'")
    def late(cfg, setup=None, **kw):       # bad input the run only finds after it started
        setup(None); raise FedHelloError('train.lr', 5.0, 'expected at most 1')
    monkeypatch.setattr(engine, 'run_experiment', late)
    assert main(['run', *TINY, '--out', str(tmp_path/'b'), '--quiet']) == 1
    assert capsys.readouterr().err == 'fedhello: error: run failed: FedHelloError: invalid train.lr=5.0: expected at most 1\n'
    def early(cfg, setup=None, **kw): raise FedHelloError('model.name', 'x', 'expected a known model')
    monkeypatch.setattr(engine, 'run_experiment', early)
    assert main(['run', *TINY, '--out', str(tmp_path/'c'), '--quiet']) == 2
    assert capsys.readouterr().err == "fedhello: error: invalid model.name='x': expected a known model\n"


def test_sanity_ladder_from_the_command_line(tmp_path):
    # 'local' and 'centralized' are values of allocation.strategy like any other method
    for method in ('local', 'centralized'):
        out = tmp_path/method
        r = fedhello('run', *TINY, '-p', 'allocation.strategy', method, '--out', out, '--quiet')
        assert r.returncode == 0, r.stderr
        assert 'chosen on validation: round' in r.stdout and 'worst client' in r.stdout
        summary = json.loads((out/'summary.json').read_text())
        assert summary['best_val']['accuracy'] is not None and summary['final']['client_acc_p10'] is not None
    r = fedhello('run', *TINY, '-p', 'allocation.strategy', 'central', '--out', tmp_path/'bad', '--quiet')
    assert r.returncode == 2 and "invalid allocation.strategy='central'" in r.stderr and "'centralized'" in r.stderr


def test_bad_files_and_values_exit_2_before_loading(tmp_path, capsys):
    """Files that are not a configuration, and values the schema or this machine cannot take: exit 2, one line that
    names the field, and no run folder (nothing loaded, nothing written)."""
    import torch
    from fedhello_nb.cli import main
    files = {'list.yaml': b'- a\n- b\n', 'broken.yaml': b'train: [unclosed\n', 'broken.json': b'{"train": ',
             'latin1.yaml': b'train:\n  lr: 0.1\xff\n'}
    said = {'list.yaml': 'expected a mapping of sections', 'broken.yaml': 'expected valid YAML',
            'broken.json': 'expected valid JSON', 'latin1.yaml': 'expected a UTF-8 text file'}
    for name, data in files.items():
        (tmp_path/name).write_bytes(data)
        assert main(['run', str(tmp_path/name), '--out', str(tmp_path/'never'), '--quiet']) == 2, name
        err = capsys.readouterr().err
        assert err.startswith(f"fedhello: error: invalid config='{tmp_path/name}': {said[name]}") and err.count('\n') == 1, err
    bad = [('train.lr', '.inf', 'invalid train.lr=inf: Input should be a finite number'),
           ('clients.fractions', '[.nan, 1.0]', 'invalid clients.fractions.0=nan'),
           ('train.seed', '-1', 'invalid train.seed=-1')]
    if not torch.cuda.is_available():
        bad.append(('train.device', 'cuda', "invalid train.device='cuda': this machine has no CUDA device"))
    for key, value, message in bad:
        assert main(['run', '-p', key, value, '--out', str(tmp_path/'never'), '--quiet']) == 2, key
        err = capsys.readouterr().err
        assert err.startswith(f'fedhello: error: {message}') and err.count('\n') == 1, err
    assert not (tmp_path/'never').exists()


def test_own_data_options_and_bad_data(tmp_path, capsys):
    """A headerless CSV with two text columns and integer labels, read with data.header, data.text_columns and
    data.label_names; data that cannot be read (not UTF-8, no header, a hub dataset offline or without `datasets`)
    exits 2 in one line naming the data field, with no run folder."""
    from fedhello_nb.cli import main
    rows = [f'{t} {k},{d} {k},{k % 2}' for k in range(120) for t, d in [('fine day', 'sunny') if k % 2 else ('storm warning', 'rain')]]
    (tmp_path/'weather.csv').write_text('\n'.join(rows) + '\n')
    own = ['-p', 'data.source', str(tmp_path/'weather.csv'), '-p', 'data.header', 'false',
           '-p', 'data.text_columns', '[0, 1]', '-p', 'data.label_column', '2', '-p', 'data.label_names', '[bad, good]',
           '-p', 'data.test_fraction', '0.25', '-p', 'data.proxy_size', '8']
    assert main(['run', *TINY, *own, '--out', str(tmp_path/'own'), '--quiet']) == 0, capsys.readouterr().err
    summary = json.loads((tmp_path/'own'/'summary.json').read_text())
    assert summary['rounds'] == 2
    per_class = (tmp_path/'own'/'per_class.csv').read_text()
    assert 'bad' in per_class and 'good' in per_class
    capsys.readouterr()
    (tmp_path/'latin1.csv').write_bytes('text,label\ncaf\xe9,a\nthé,b\n'.encode('latin-1'))
    bad = [(['-p', 'data.source', str(tmp_path/'latin1.csv')], f"invalid data.source='{tmp_path/'latin1.csv'}': expected UTF-8 text"),
           (['-p', 'data.source', str(tmp_path/'weather.csv')], 'invalid data.text_column=None: found none of'),
           (['-p', 'data.source', 'hf:glue:sst2'], "invalid data.source='hf:glue:sst2': "),
           ([*own, '-p', 'data.label_names', '[only]'], 'invalid data.label_names=')]
    for extra, message in bad:
        assert main(['run', *TINY, *extra, '--out', str(tmp_path/'never'), '--quiet']) == 2, extra
        err = capsys.readouterr().err
        assert err.startswith(f'fedhello: error: {message}') and err.count('\n') == 1, err
    assert not (tmp_path/'never').exists()


def test_examples_are_valid():
    "Every file in examples/ is a configuration (or a sweep) the schema accepts, as `fedhello config` reads it."
    from fedhello_nb.batch import load_sweep
    from fedhello_nb.config import load_config
    root = Path(__file__).resolve().parents[1]/'examples'
    files = sorted(root.glob('*.yaml'))
    assert len(files) >= 4, files
    for f in files:
        spec = yaml.safe_load(f.read_text())
        if 'base' in spec or 'grid' in spec: assert len(load_sweep(f).sets) == 30, f
        else: assert load_config(f).name == spec['name'], f
