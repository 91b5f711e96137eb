"""Headless tests of the widget panels (fedhello_nb.widgets): set controls, click buttons, check what the panels
computed and show. No browser and no kernel: widgets work as plain Python objects."""
import os, time
from pathlib import Path
import pytest

os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('MPLBACKEND', 'Agg')

import numpy as np
import yaml
from fedhello_nb.config import make_config
from fedhello_nb.validate import FedHelloError
from fedhello_nb import widgets as wg
from fedhello_nb.widgets import (AllocationExplorer, PartitionExplorer, GroupingExplorer, MemoryExplorer, RunPanel,
                                 figures_in)
from fedhello_nb import memory
from fedhello_nb.memory import estimator_for
from fedhello_nb.model import model_depth

TINY = dict(model={'name': 'tiny-bert'}, data={'max_train': 400, 'max_test': 120},
            partition={'scheme': 'pathological', 'classes_per_client': 4}, clients={'num_clients': 8, 'per_round': 4},
            allocation={'strategy': 'rgd'}, train={'rounds': 3, 'local_steps': 2, 'batch_size': 8, 'lr': 1e-2})
RUN_TIMEOUT = 300   # seconds; a tiny run takes a few seconds on an idle 2-core machine


@pytest.fixture(scope='module')
def tiny_estimator(tmp_path_factory):
    "The tiny BERT's memory estimator, calibrated once for this module into a private cache folder."
    old = os.environ.get('FEDHELLO_CACHE')
    os.environ['FEDHELLO_CACHE'] = str(tmp_path_factory.mktemp('cache'))
    memory.ESTIMATORS.pop(('tiny-bert', 8), None)
    try: yield estimator_for('tiny-bert')
    finally:
        if old is None: os.environ.pop('FEDHELLO_CACHE', None)
        else: os.environ['FEDHELLO_CACHE'] = old


def test_estimator_cache(tiny_estimator):
    files = list(memory.estimator_cache_dir().glob('tiny-bert-r8-*.yaml'))
    assert len(files) == 1
    memory.ESTIMATORS.pop(('tiny-bert', 8))
    t = time.perf_counter()
    again = estimator_for('tiny-bert')                     # read back from disk, not calibrated again
    assert time.perf_counter() - t < 2
    assert again.to_dict() == tiny_estimator.to_dict()


# -- AllocationExplorer

def test_allocation_defaults_and_controls():
    ax = AllocationExplorer(debounce=0)
    assert ax.error is None and figures_in(ax.out) == 1
    assert ax.plan.capacities == [6, 9, 12] and ax.allocation.row_sums.tolist() == [6] * 4 + [9] * 4 + [12] * 4
    assert ax.gd_allocation.counts.tolist() == [12, 12, 12, 8, 8, 4, 4, 4, 8, 12, 12, 12]
    assert 'rgd, bottleneck: 12 clients' in ax.status.value
    ax.strategy.value = 'gd'
    assert (ax.allocation.counts == ax.gd_allocation.counts).all()
    ax.strategy.value = 'full'
    assert ax.allocation.row_sums.tolist() == [12] * 12
    ax.strategy.value = 'depth'; ax.depth.value = 2
    assert ax.allocation.layers_of(0) == [10, 11]
    assert ax.export()['allocation.depth'] == 1 and 'depth 2 as 1' in ax.warning   # carried to the default model's 6 blocks
    ax.depth.value = 0
    assert ax.allocation.layers_of(11) == list(range(12)) and ax.export()['allocation.depth'] is None
    ax.strategy.value = 'fedra'; ax.num_clients.value = 30
    assert ax.allocation.matrix.shape == (30, 12) and ax.expected is not None
    assert np.allclose(ax.expected, ax.expected[0])            # FedRA: every layer equally likely


def test_allocation_bad_input_is_shown_not_raised():
    ax = AllocationExplorer(debounce=0)
    ax.capacities.value = '6, 9, 13'                            # a capacity above L = 12
    assert ax.error == 'invalid capacities[2]=13: expected an integer >= 1 and <= 12'
    assert 'invalid capacities[2]=13' in ax.status.value and 'color:#b00020' in ax.status.value
    assert ax.plan.capacities == [6, 9, 12] and figures_in(ax.out) == 1   # the last good state stays
    with pytest.raises(FedHelloError, match='capacities'): ax.export()
    ax.export_button.click()
    assert ax.export_area.value.startswith('# cannot export: invalid capacities[2]=13')
    ax.capacities.value = '6, 9, 12'
    ax.fractions.value = '0.5, 0.3, 0.1'                        # fractions that do not sum to one
    assert 'they sum to 0.9' in ax.error and 'they sum to 0.9' in ax.status.value
    ax.fractions.value = 'a lot'
    assert ax.error.startswith("invalid clients.fractions='a lot': expected numbers")
    ax.fractions.value = '0.6:0.3:0.1'
    assert ax.error is None and ax.plan.class_sizes() == [7, 3, 2]


def test_parse_numbers_rejects_non_finite():
    assert wg.parse_numbers('1/3, 0.5', 'f') == [1/3, 0.5]
    for typed, why in (('1e400', '1e400 is too large'), ('-1e400', 'is too large'), ('inf', 'inf is not a finite number'),
                       ('NaN', 'NaN is not a finite number'), ('1' + '0' * 400 + '/7', 'is too large')):
        with pytest.raises(FedHelloError, match=r'^invalid clients\.fractions=') as e: wg.parse_numbers(typed, 'clients.fractions')
        assert why in str(e.value)
    with pytest.raises(FedHelloError, match='below 2\\*\\*63'): wg.parse_numbers('1e19', 'clients.capacities', integer=True)


def test_allocation_overflow_and_bad_scores_are_shown():
    ax = AllocationExplorer(num_layers=4, strategy='fim', scores=[1, 2, 3, 4], debounce=0)
    assert ax.error is None
    ax.fractions.value = '1e400, 0, 0'                          # was an OverflowError out of the change handler
    assert ax.error.startswith("invalid clients.fractions='1e400, 0, 0': 1e400 is too large") and 'color:#b00020' in ax.status.value
    ax.fractions.value = ''
    ax.scores.value = '1, 2, 1e400, 4'
    assert ax.error.startswith("invalid scores='1, 2, 1e400, 4': 1e400 is too large")
    ax.scores.value = '1, -2, 3, 4'
    assert ax.error == "invalid scores='1, -2, 3, 4': FIM scores are Fisher information: non-negative, and not all zero"
    ax.scores.value = '0 0 0 0'
    assert 'not all zero' in ax.error and 'not all zero' in ax.status.value
    ax.scores.value = '1, 2, 3, inf'
    assert 'inf is not a finite number' in ax.error
    ax.scores.value = '1, 2, 3, 4'
    assert ax.error is None and np.isclose(ax.probabilities.sum(), 1)


def test_panel_shows_unexpected_exceptions(monkeypatch):
    ax = AllocationExplorer(debounce=0)
    monkeypatch.setattr(wg, 'rgd_probabilities', lambda *a, **k: np.ones(3) @ np.ones(4))   # a bug: shapes differ
    ax.seed.value = 1                                           # the change handler does not raise ...
    assert ax.error.startswith('unexpected ValueError: ') and isinstance(ax.exception, ValueError)
    assert 'unexpected ValueError' in ax.status.value and 'color:#b00020' in ax.status.value
    assert figures_in(ax.out) == 1                              # ... and the last good figures stay
    with pytest.raises(ValueError): ax.export()
    ax.export_button.click()
    assert ax.export_area.value.startswith('# cannot export: unexpected ValueError')
    monkeypatch.undo()
    ax.seed.value = 2
    assert ax.error is None and ax.exception is None


def test_allocation_export_runs_on_the_models_depth():
    """The export goes through what a run does: `make_config`, then the engine's `Federation.from_config` builds the
    capacity plan for the model's real depth and the strategy, and a round is planned."""
    from fedhello_nb.engine import Federation, plan_round
    from fedhello_nb.allocation import CapacityPlan
    # the default panel (L = 12) exports for the default 6-block model: capacities carried to 3/5/6, and a warning
    ax = AllocationExplorer(debounce=0)
    flat = ax.export()
    assert flat['model.name'] == 'all-MiniLM-L6-v2' and flat['clients.capacities'] == [3, 5, 6]
    assert ax.warning.startswith('the export is for all-MiniLM-L6-v2 (6 blocks), not L = 12')
    ax.export_button.click()
    assert ax.export_area.value.startswith('# warning: the export is for all-MiniLM-L6-v2 (6 blocks)')
    cfg = make_config(None, **flat)
    with pytest.raises(FedHelloError, match='<= 6'):            # what the export used to hold does not run
        CapacityPlan(ax.plan.capacities, cfg.clients.fractions, cfg.clients.num_clients, num_layers=model_depth(cfg.model.name))
    # a 12-layer custom-order exploration exported for the tiny BERT (4 blocks), run through the engine
    order = [11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0]
    ax = AllocationExplorer(strategy='gd', pattern='custom', custom_order=order, capacities=[3, 6, 12],
                            fractions=[0.5, 0.25, 0.25], num_clients=8, run_model='tiny-bert', debounce=0)
    flat = ax.export()
    assert flat['model.name'] == 'tiny-bert' and flat['clients.capacities'] == [1, 2, 4]
    assert flat['allocation.custom_order'] == [3, 2, 1, 0] and 'the custom order as [3, 2, 1, 0]' in ax.warning
    small = {'data.max_train': 200, 'data.max_test': 40, 'train.rounds': 1}
    fed = Federation.from_config(make_config(None, **flat, **small))
    assert fed.num_blocks == 4 and fed.plan.capacities == [1, 2, 4]
    rp = plan_round(fed, 0, fed.fm.state())
    for client in rp.clients:                                   # GD with the carried order: the deepest blocks first
        c = fed.plan.capacity_of(client)
        assert rp.amap.layers_of(client) == list(range(4 - c, 4)), (client, c)
    # at the model's depth: no warning, the values as shown
    ax.num_layers.value = 4
    ax.custom_order.value = '3 2 1 0'; ax.capacities.value = '1, 2, 4'
    assert ax.error is None and ax.warning is None and ax.export()['clients.capacities'] == [1, 2, 4]


def test_allocation_custom_patterns_and_fim():
    ax = AllocationExplorer(num_layers=6, pattern='custom', custom_order=[5, 4, 3, 2, 1, 0], debounce=0)
    assert ax.plan.capacities == [3, 5, 6] and ax.gd_allocation.layers_of(0) == [3, 4, 5]
    ax.custom_kind.value = 'counts'
    ax.set_counts([9, 1, 1, 1, 1, 9])
    assert ax.gd_allocation.layers_of(0) == [0, 1, 5]
    assert ax.export()['allocation.custom_order'] == [0, 5, 1, 2, 3, 4]
    cfg = ax.config
    assert cfg.allocation.pattern == 'custom' and cfg.allocation.custom_order == [0, 5, 1, 2, 3, 4]
    ax.num_layers.value = 8                                     # the sliders follow L, the scaled capacities too
    assert len(ax.count_sliders.children) == 8 and ax.plan.capacities == [4, 6, 8] and ax.error is None
    scores = [0.1, 0.1, 0.2, 0.2, 0.9, 1.0]
    fim = AllocationExplorer(num_layers=6, strategy='fim', scores=scores, debounce=0)
    assert np.allclose(fim.probabilities, np.array([1, 1, 2, 2, 3, 3]) / 12)
    assert fim.export()['allocation.fim_mapping'] == 'levels'
    fim.mapping.value = 'proportional'
    assert np.allclose(fim.probabilities, np.array(scores) / sum(scores))
    fim.scores.value = '1 2 3'
    assert 'needs one layer score per layer (6)' in fim.error


def test_allocation_debounce_coalesces():
    ax = AllocationExplorer(debounce=0.3)
    n = ax.updates
    ax.num_clients.value = 20; ax.num_clients.value = 24; ax.seed.value = 3
    assert ax.updates == n                                      # nothing yet: waiting for quiet
    ax.flush()
    assert ax.updates == n + 1 and ax.allocation.matrix.shape == (24, 12)
    ax.round.value = 1
    time.sleep(1.0)                                             # the timer fires on its own
    assert ax.updates == n + 2 and ax.allocation.info['round'] == 1


def test_allocation_memory(tiny_estimator):
    ax = AllocationExplorer(estimator=tiny_estimator, debounce=0)
    assert ax.num_layers.value == 4 and ax.plan.capacities == [2, 3, 4]
    m = ax.memory
    assert m['capacity'].tolist() == [2, 3, 4] and figures_in(ax.memory_out) == 1
    assert (m['peak'] <= m['full_peak'] * 1.0001).all() and (m['peak'] <= m['gd_peak'] + 1).all()
    ax.strategy.value = 'gd'; ax.pattern.value = 'inverted_triangle'
    assert ax.memory['shallowest'].tolist() == [2.0, 1.0, 0.0]  # the deep end: backward stops early
    ax.num_layers.value = 6                                     # no longer the model's depth: memory hidden
    assert ax.memory is None and 'set L = 4' in ax.memory_out.outputs[0]['data']['text/html']


# -- PartitionExplorer and GroupingExplorer

def test_partition_explorer():
    pe = PartitionExplorer(num_clients=10, debounce=0)
    assert pe.error is None and figures_in(pe.out) == 1 and pe.partition.scheme == 'dirichlet'
    assert pe.partition.num_clients == 10 and len(pe.table_out.outputs) == 1
    kl_dir = pe.divergence['kl'].mean()
    pe.alpha.value = 100.0
    assert pe.divergence['kl'].mean() < kl_dir                 # a larger alpha is closer to IID
    with pe.hold():
        pe.scheme.value = 'pathological'; pe.classes_per_client.value = 2; pe.beta.value = 0.5
    assert pe.divergence['classes'].max() == 2
    assert pe.alpha.layout.display == 'none' and pe.beta.layout.display == ''
    pe.num_clients.value = 3                                    # 3 clients x 2 classes cannot hold 13 classes
    assert 'expected num_clients * classes_per_client >= 13' in pe.error
    pe.num_clients.value = 10
    flat = pe.export()
    assert flat['partition.scheme'] == 'pathological' and flat['partition.beta'] == 0.5
    assert pe.to_papermill('runs/x') == {'overrides': flat, 'out_dir': 'runs/x'}


def test_partition_shared_data():
    pe = PartitionExplorer('shared:banking77', scheme='iid', num_clients=5, max_train=500, debounce=0)
    assert pe.error is None and pe.task.num_classes == 77 and pe.partition.sizes.sum() == 500
    assert pe.export()['data.source'] == 'shared:banking77'


def test_grouping_explorer_follows_partition():
    pe = PartitionExplorer(num_clients=12, alpha=0.2, debounce=0)
    ge = GroupingExplorer(pe, num_groups=3, debounce=0)
    assert ge.error is None and figures_in(ge.out) == 2 and sum(ge.grouping.sizes) == 12
    assert ge.grouping.objective < ge.random.objective and ge.random.sizes == ge.grouping.sizes
    assert list(ge.table['method']) == ['search', 'random']
    pe.num_clients.value = 16
    ge.flush()
    assert sum(ge.grouping.sizes) == 16 and ge.num_groups.max == 16
    ge.auto.value = True
    assert ge.grouping.sweep is not None and ge.export()['hier.num_groups'] is None
    flat = ge.export()
    assert flat['allocation.strategy'] == 'hierfedlora' and flat['clients.num_clients'] == 16
    assert make_config(None, **flat).hier.lam == 0.0


# -- MemoryExplorer

def test_memory_explorer(tiny_estimator):
    me = MemoryExplorer(estimator=tiny_estimator, batch=16, seq_len=64, budget='25MB, 40MB', debounce=0)
    assert me.error is None and figures_in(me.out) == 1
    assert set(me.memory_table['method']) == {'full LoRA', 'GD', 'RGD', 'HetLoRA'}
    assert len(me.capacities_fit) == 2 and me.capacities_fit[0] <= me.capacities_fit[1]
    assert 'under bottleneck the budgets' in me.status.value
    me.budget.value = '1KB'
    assert 'below the smallest feasible allocation' in me.error and figures_in(me.out) == 1
    me.budget.value = '1GB'
    assert me.capacities_fit == [4]
    flat = me.export()
    assert flat['clients.capacities'] == [4] and flat['train.batch_size'] == 16 and 'model.name' not in flat
    me.value.value = 'activations'
    assert me.error is None and figures_in(me.out) == 1


def test_memory_explorer_by_name(tiny_estimator):
    me = MemoryExplorer('tiny-bert', budget='', debounce=0)     # the estimator comes from the cache
    assert me.error is None and me.estimator.to_dict() == tiny_estimator.to_dict()
    assert 'give a budget' in me.status.value and me.export()['model.name'] == 'tiny-bert'


# -- RunPanel

def _wait_for(cond, timeout):
    end = time.time() + timeout
    while time.time() < end and not cond(): time.sleep(0.05)
    return cond()


def test_run_panel_runs_and_saves(tmp_path):
    rp = RunPanel(TINY, **{'output.dir': str(tmp_path/'run')})
    assert rp.status.value == 'ready' and not rp.running
    rp.start_button.click()
    assert rp.wait(RUN_TIMEOUT), 'the run did not finish in time'
    assert rp.run_error is None, rp.run_error
    assert len(rp.rows) == 3 and rp.progress.value == 3 and rp.progress.bar_style == 'success'
    assert rp.status.value.startswith('done: 3 rounds, accuracy')
    assert figures_in(rp.out) == 1
    for f in ('config.json', 'rounds.csv', 'clients.csv', 'summary.json', 'metric.png', 'trainers.png'):
        assert (tmp_path/'run'/f).is_file(), f
    assert rp.result.rounds['round'].tolist() == [0, 1, 2]
    assert not rp.start_button.disabled and rp.stop_button.disabled


def test_run_panel_stop_and_resume(tmp_path):
    rp = RunPanel(TINY, redraw_every=0, **{'train.rounds': 6, 'output.dir': str(tmp_path/'run')})
    assert rp.start()
    assert _wait_for(lambda: len(rp.rows) >= 1, RUN_TIMEOUT)
    rp.stop_button.click()
    assert rp.wait(RUN_TIMEOUT)
    done = len(rp.rows)
    assert 1 <= done < 6 and rp.result is None and rp.progress.bar_style == 'warning'
    assert rp.status.value.startswith(f'stopped after round {done}')
    assert (tmp_path/'run'/'rounds.csv').is_file()
    rp.start(); rp.wait(RUN_TIMEOUT)                            # the folder holds a run: refused, shown
    assert 'holds the results of another run' in rp.status.value
    rp.resume.value = True
    assert rp.start() and rp.wait(RUN_TIMEOUT) and rp.run_error is None, rp.run_error
    assert rp.result.resumed_from == done and len(rp.result.rounds) == 6


def test_run_panel_config_editing(tmp_path):
    rp = RunPanel(TINY, **{'output.dir': str(tmp_path/'run')})
    rp.rounds.value = 7; rp.strategy.value = 'gd'
    assert rp.cfg.train.rounds == 7 and 'rounds: 7' in rp.yaml.value and 'strategy: gd' in rp.yaml.value
    rp.lr.value = -1.0
    assert rp.error.startswith('invalid train.lr=-1')
    assert rp.start() is False and not rp.running and 'fix the configuration first' in rp.status.value
    rp.lr.value = 0.02
    text = rp.yaml.value.replace('num_clients: 8', 'num_clients: 6').replace('per_round: 4', 'per_round: 3')
    rp.yaml.value = text
    rp.apply_button.click()
    assert rp.error is None and rp.num_clients.value == 6 and rp.cfg.clients.per_round == 3
    rp.yaml.value = 'train: [unclosed'
    rp.apply_button.click()
    assert rp.error.startswith('invalid yaml=') and rp.cfg.clients.num_clients == 6
    rp.yaml.value = 'train:\n  rounds: 0\n'
    rp.apply_button.click()
    assert rp.error.startswith('invalid train.rounds=0')
    rp.yaml.value = rp.cfg.to_yaml(); rp.apply_button.click()
    p = rp.to_papermill(out_dir='runs/y')
    assert p['out_dir'] == 'runs/y' and p['overrides']['train.lr'] == 0.02
    assert not any(k.startswith('output.') for k in p['overrides'])
    rp.trackers.value = ('tensorboard',)                       # a list field from a multiple choice, kept in the export
    assert rp.cfg.output.trackers == ['tensorboard'] and 'trackers:\n  - tensorboard\n' in rp.yaml.value
    assert rp.to_papermill()['overrides']['output.trackers'] == ['tensorboard']
    rp.export_button.click()
    assert 'papermill' in rp.export_area.value and rp.export_area.layout.display == ''
    parsed = yaml.safe_load(rp.export_area.value.split('# papermill')[0])
    assert parsed['train']['rounds'] == 7
