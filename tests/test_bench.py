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
