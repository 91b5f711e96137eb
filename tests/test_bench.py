"The benchmarks in bench/ still run (on a tiny setting); their real figures come from running them by hand."
import importlib.util, sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / 'bench'

def load(name):
    spec = importlib.util.spec_from_file_location(name, BENCH / f'{name}.py')
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod

def test_round_speed_tiny(capsys):
    out = load('round_speed').main(['--tiny'])
    printed = capsys.readouterr().out
    assert 'naive/engine' in printed and 'per-step time against full LoRA' in printed
    assert out['naive_over_engine'] > 0 and out['full_step'] > 0
    assert 'bottleneck' in printed and 'inverted_triangle' in printed

def test_memory_compute_args(capsys):
    "memory_compute's argument checks (its --tiny run is tests/test_memory.py::test_bench_tiny)."
    import pytest
    parse = load('memory_compute').parse_args
    assert parse(['--repeats', '0']).repeats == 0             # memory without timing
    for argv, msg in ((['--batch', '0'], '--batch must be >= 1'), (['--repeats', '-1'], '--repeats must be >= 0'),
                      (['--vit-batch', '0'], '--vit-batch must be >= 1')):
        with pytest.raises(SystemExit) as e: parse(argv)
        assert e.value.code == 2 and msg in capsys.readouterr().err, argv

def test_round_metrics_tiny(tmp_path, capsys):
    "round_metrics writes the per-round metrics of a strategy, and its comparison finds a changed number."
    import json
    mod = load('round_metrics')
    mod.main(['--out', str(tmp_path/'a.json'), '--strategies', 'rgd'])
    res = json.loads((tmp_path/'a.json').read_text())
    assert len(res['rgd']['rounds']) == 3 and len(res['rgd']['clients']) == 9
    assert not mod.main(['--compare', str(tmp_path/'a.json'), str(tmp_path/'a.json')])['rgd']
    res['rgd']['rounds'][1]['selected'] += 1
    (tmp_path/'b.json').write_text(json.dumps(res))
    diffs = mod.main(['--compare', str(tmp_path/'a.json'), str(tmp_path/'b.json')])['rgd']
    assert [d[:3] for d in diffs] == [('rounds', 1, 'selected')]
    assert 'rgd          1 differences' in capsys.readouterr().out

def test_token_cache_tiny(capsys):
    out = load('token_cache').main(['--tiny'])
    printed = capsys.readouterr().out
    assert out['rows'] == 64 and out['ratio'] > 0
    assert 'cache miss' in printed and 'cache hit' in printed and 'median no-cache / cache-hit' in printed
