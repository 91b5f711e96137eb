"""fedhello_nb on Flower's deployment runtime: a real SuperLink and SuperNodes on 127.0.0.1 against the in-process engine.

Needs the `flower` extra (`pip install -e ".[dev,flower]"`); skipped without it. The simulation-runtime test also needs
the `flower-simulation` extra (Ray; `tools/setup.sh` installs it) and is skipped without it. Every process the deployment
starts (SuperLink, SuperNodes, `flwr run`, and the SuperExec / App processes they start) is stopped at the end,
also when a test fails, and the teardown checks that none is left.
"""
import json
import os
os.environ.setdefault('HF_HUB_OFFLINE', '1')
import time
from pathlib import Path
import numpy as np
import pandas as pd
import pytest
import torch

flwr = pytest.importorskip('flwr')
psutil = pytest.importorskip('psutil')

from fedhello_nb.config import make_config
from fedhello_nb.engine import Federation, run_experiment, select_clients
from fedhello_nb.memory import Allocation, MemoryEstimator
from fedhello_nb.runio import load_checkpoint, read_table
from fedhello_nb.flower import LocalDeployment, ServerOptions, write_app

# 3 clients, 2 per round, capacities 1 (client 0) and 2 (clients 1, 2) of tiny-bert's 4 blocks
EXPERIMENT = dict(model={'name': 'tiny-bert'}, data={'max_train': 300, 'max_test': 60},
                  partition={'scheme': 'dirichlet', 'alpha': 1.0},
                  clients={'num_clients': 3, 'per_round': 2, 'capacities': [1, 2], 'fractions': [1/3, 2/3]},
                  allocation={'strategy': 'fedhello', 't_rgd': 1},   # RGD-HLA in round 0, FIM-HLA (server-side scores) in round 1
                  train={'rounds': 2, 'local_steps': 2, 'batch_size': 8, 'lr': 1e-2, 'device': 'cpu'},
                  output={'quiet': True})
# node 1 declares a memory budget that its node turns into capacity 2 (the plan's value, so the run stays the engine's)
GOOD_NODES = [{'partition-id': 0, 'capacity': 1, 'num-partitions': 3}, {'partition-id': 1, 'memory-budget': None}, {'partition-id': 2}]
# no partition id; capacity above L=4; both a capacity and a memory budget (refused before the node loads torch: a
# budget below what one block needs is refused with the memory module's message, checked in the chapter's node_info tests)
BAD_NODES = [{'num-partitions': 3}, {'partition-id': 1, 'capacity': 9}, {'partition-id': 2, 'capacity': 2, 'memory-budget': '4GB'}]


@pytest.fixture(scope='module')
def federation():
    "The experiment's `Federation`, built in-process (initial state, memory estimates)."
    return Federation.from_config(make_config(EXPERIMENT))


@pytest.fixture(scope='module')
def budget_for_two(federation):
    "A memory budget between the estimated peaks of capacity 2 and 3 under the experiment's pattern and batch (MiB)."
    est = MemoryEstimator.calibrate(federation.fm)
    peak = lambda c: est.estimate(Allocation.gd('bottleneck', c, 4), EXPERIMENT['train']['batch_size'], 128).peak
    return f'{(peak(2) + peak(3)) / 2 / 2**20:.4f}MiB'


@pytest.fixture(scope='module')
def deployment(tmp_path_factory, budget_for_two):
    work = tmp_path_factory.mktemp('flower')
    nodes = [dict(nc, **{'memory-budget': budget_for_two}) if 'memory-budget' in nc else nc for nc in GOOD_NODES]
    dep = LocalDeployment(nodes + BAD_NODES, work/'deploy')
    seen = []
    try:
        dep.start()
        yield dep
        seen = dep.processes()
    finally:
        dep.stop()
    time.sleep(0.5)
    alive = [p for p in seen if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert not alive, f'processes left running: {alive}'


def _experiment(path:Path, **over):
    cfg = make_config(EXPERIMENT, **over)
    cfg.save(path/'experiment.json')
    return cfg


@pytest.fixture(scope='module')
def flower_run(deployment, tmp_path_factory):
    "Two rounds on the deployment: (run folder, seconds)."
    work = tmp_path_factory.mktemp('run')
    _experiment(work, **{'output.dir': str(work/'out')})
    app = write_app(work/'app', experiment=str(work/'experiment.json'),
                    options=ServerOptions(reply_timeout=180, node_wait=60, min_nodes=6))
    t0 = time.perf_counter()
    p = deployment.run(app, timeout=300)
    seconds = time.perf_counter() - t0
    print(f'flwr run (2 rounds, 3 SuperNodes + 3 refused): {seconds:.1f} s')
    assert (work/'out'/'summary.json').exists(), f'flwr run exited {p.returncode}; log:\n' + deployment.log()[-4000:]
    return work/'out', seconds


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
    "The same experiment in-process (`run_experiment`)."
    return run_experiment(make_config(EXPERIMENT, **{'output.dir': str(tmp_path_factory.mktemp('ref')/'out')}))


def _same_tensors(run_dir:Path, ref):
    tensors, saved = load_checkpoint(run_dir)
    assert saved['round'] == EXPERIMENT['train']['rounds']
    assert set(ref.state) <= set(tensors)
    for k, v in ref.state.items():
        torch.testing.assert_close(tensors[k].float(), v.float(), rtol=1e-4, atol=1e-5, msg=lambda m: f'{k}: {m}')
    return tensors


def test_flower_equals_engine(flower_run, reference, federation):
    run_dir, seconds = flower_run
    ref = reference
    fl_rounds, fl_clients = read_table(run_dir/'rounds.csv'), read_table(run_dir/'clients.csv')
    # same clients, same allocations, everyone replied
    assert fl_rounds['selected'].tolist() == ref.rounds['selected'].tolist()
    assert fl_rounds['replied'].tolist() == ref.rounds['replied'].tolist() == [2, 2]
    assert fl_rounds['phase'].tolist() == ref.rounds['phase'].tolist() == ['rgd', 'fim']
    cols = ['round', 'client', 'capacity', 'blocks', 'samples', 'status', 'steps', 'bytes_down', 'bytes_up']
    assert fl_clients[cols].astype(str).values.tolist() == ref.clients[cols].astype(str).values.tolist()
    np.testing.assert_allclose(fl_clients['loss'], ref.clients['loss'], rtol=1e-4, atol=1e-5)
    # the ledger against what Flower counted for the messages it carried: larger by the encoding alone
    # (per tensor a numpy header and its name; the configuration and instruction down, the metrics up)
    tensors_sent = len(federation.fm.state())
    down = fl_clients['message_bytes_down'] - fl_clients['bytes_down']
    up = fl_clients['message_bytes_up'] - fl_clients['bytes_up']
    config = len(make_config(EXPERIMENT).to_json(indent=None))
    assert (down > 0).all() and (down <= config + 2048 + 256 * tensors_sent).all(), down.tolist()
    assert (up > 0).all() and (up <= 256 + 256 * tensors_sent).all(), up.tolist()
    comm = json.loads((run_dir/'summary.json').read_text())['communication']
    assert comm['message_bytes_up'] == int(fl_clients['message_bytes_up'].sum()) > comm['bytes_up'] == int(fl_clients['bytes_up'].sum())
    # the same aggregated tensors
    tensors = _same_tensors(run_dir, ref)
    # the run really trained: some global tensors moved away from the initial state
    init = federation.fm.state()
    assert any(not torch.allclose(tensors[k].float(), init[k].float(), atol=1e-6) for k in init)
    np.testing.assert_allclose(fl_rounds['accuracy'], ref.rounds['accuracy'], atol=1e-6)
    np.testing.assert_allclose(fl_rounds['client_acc_mean'], ref.rounds['client_acc_mean'], atol=1e-6)


def test_memory_budget_node(flower_run, budget_for_two):
    "The node with a memory budget sized its own capacity (2, the plan's value) and the server recorded both."
    nodes = read_table(flower_run[0]/'nodes.csv').set_index('client')
    assert nodes.loc[1, 'status'] == 'ok' and int(nodes.loc[1, 'capacity']) == 2
    assert abs(float(nodes.loc[1, 'memory_budget']) - float(budget_for_two[:-3]) * 2**20) < 1
    assert np.isnan(float(nodes.loc[0, 'memory_budget']))


def test_bad_node_configuration_refused(flower_run, deployment):
    run_dir, _ = flower_run
    nodes = read_table(run_dir/'nodes.csv')
    assert sorted(nodes.loc[nodes.status == 'ok', 'client'].tolist()) == [0, 1, 2]
    reasons = nodes.loc[nodes.status == 'refused', 'reason'].tolist()
    assert len(reasons) == 3, nodes
    assert any('invalid node_config.partition-id=None' in r for r in reasons), reasons
    assert any('invalid node_config.capacity=9: expected an integer >= 1 and <= 4' in r for r in reasons), reasons
    assert any("invalid node_config.memory-budget='4GB': expected either capacity or memory-budget" in r for r in reasons), reasons
    # the refusals are also in the nodes' own logs
    for i in (3, 4, 5): assert 'fedhello node refused the query message' in deployment.log(f'supernode{i}.log'), i


# Besides the layer allocation of `flower_run` (Fed-HeLLo, which reaches its FIM phase in round 1), HierFedLoRA runs on
# the real SuperNodes: its intra-group rounds are further exchanges within a round, the one flow of messages no other
# family has. The other families' messages (HetLoRA's rank-truncated tensors, FLoRA's merged base weights, `local`'s
# per-client models) are checked against the in-process runtime, tensors and ledger, in the Flower chapter's stand-in
# grid, which runs node_train itself on Flower's own Message objects; the transport under them is the same for all.
FAMILIES = {'hierfedlora': ({}, ['group', 'depth', 'tau'])}

@pytest.mark.parametrize('strategy', list(FAMILIES))
def test_every_family_on_flower_equals_engine(deployment, flower_run, tmp_path, strategy):
    "The engine's round with a FlowerRuntime: the same clients, rows, losses, accuracy and tensors as in-process."
    extra_over, extra_cols = FAMILIES[strategy]
    over = {'allocation.strategy': strategy, 'output.dir': str(tmp_path/'out'), **extra_over}
    _experiment(tmp_path, **over)
    app = write_app(tmp_path/'app', experiment=str(tmp_path/'experiment.json'),
                    options=ServerOptions(reply_timeout=180, node_wait=30, min_nodes=6))
    p = deployment.run(app, timeout=300)
    assert p.returncode == 0 and (tmp_path/'out'/'summary.json').exists(), deployment.log()[-4000:]
    ref = run_experiment(make_config(EXPERIMENT, **{**over, 'output.dir': str(tmp_path/'ref')}))
    fl_rounds, fl_clients = read_table(tmp_path/'out'/'rounds.csv'), read_table(tmp_path/'out'/'clients.csv')
    assert fl_rounds['replied'].tolist() == ref.rounds['replied'].tolist() == [2, 2]
    assert fl_rounds['phase'].tolist() == ref.rounds['phase'].tolist()
    cols = ['round', 'client', 'blocks', 'status', 'steps', 'bytes_down', 'bytes_up', *extra_cols]
    assert fl_clients[cols].astype(str).values.tolist() == ref.clients[cols].astype(str).values.tolist()
    # float32 tensors travel bit for bit; the tolerance covers the order of the sums in two processes
    np.testing.assert_allclose(fl_clients['loss'], ref.clients['loss'], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(fl_rounds['accuracy'], ref.rounds['accuracy'], atol=1e-6)
    np.testing.assert_allclose(fl_rounds['client_acc_mean'], ref.rounds['client_acc_mean'], atol=1e-6)
    if strategy == 'hierfedlora':
        pd.testing.assert_frame_equal(read_table(tmp_path/'out'/'groups.csv'), read_table(tmp_path/'ref'/'groups.csv'),
                                      check_exact=False, rtol=1e-4)
    _same_tensors(tmp_path/'out', ref)


FAULTY_APP = """\
# A ClientApp that trains like fedhello's but sends client {bad}'s first tensor with a wrong shape.
import numpy as np
from flwr.app import Array
from flwr.clientapp import ClientApp
from fedhello_nb.flower import node_query, node_train

app = ClientApp()
app.query()(node_query)

@app.train()
def train(msg, context):
    reply = node_train(msg, context)
    if int(context.node_config.get('partition-id', -1)) == {bad} and not reply.has_error():
        delta = reply.content['delta']
        first = sorted(delta.keys())[0]
        delta[first] = Array(np.zeros((3, 1), dtype=np.float32))
    return reply
"""


def _clientapps(pid:int) -> list:
    "Live ClientApp processes below `pid`."
    out = []
    for c in psutil.Process(pid).children(recursive=True):
        try:
            if 'clientapp' in ' '.join(c.cmdline()).lower(): out.append(c)
        except psutil.Error: pass
    return out


def _reply_timeout(run_dir:Path) -> float:
    """Twice the slowest round of the two-round run (two clients trained at once there, three start here), in
    20..90 s: long enough for the live replies on a busy machine, short enough that waiting out the dead node costs
    little."""
    return float(round(min(90.0, max(20.0, 2.0 * read_table(run_dir/'rounds.csv')['seconds'].max()))))


def test_bad_reply_and_dead_node_do_not_end_the_run(deployment, flower_run, federation, tmp_path):
    """One round with all three clients: one ClientApp replies with a tensor of the wrong shape, and the SuperNode of
    another is killed while it trains. The round rejects the first, records the second as failed, aggregates the
    third, and the run ends with exit 0 (one run for both faults: each Flower run costs a minute on two cores)."""
    timeout = _reply_timeout(flower_run[0])
    cfg = _experiment(tmp_path, **{'output.dir': str(tmp_path/'out'), 'train.rounds': 1, 'train.local_steps': 1,
                                   'clients.per_round': 3, 'data.max_test': 20})
    bad, victim, survivor = select_clients(3, 3, cfg.train.seed, 0)
    app = tmp_path/'app'
    app.mkdir()
    (app/'faulty.py').write_text(FAULTY_APP.format(bad=bad))
    write_app(app, experiment=str(tmp_path/'experiment.json'), clientapp='faulty:app',
              options=ServerOptions(reply_timeout=timeout, node_wait=30, min_nodes=6))
    t0 = time.perf_counter()
    p = deployment.run(app, timeout=240, wait=False)
    try:
        # wait until the victim's node runs a ClientApp for this run's train message, then kill the node
        node = deployment.nodes[victim]
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            kids = _clientapps(node.pid)
            if kids and (tmp_path/'out'/'nodes.csv').exists(): break
            time.sleep(0.2)
        else: pytest.fail('the victim node never started a ClientApp')
        deployment.kill_node(victim)
        p.wait(timeout + 120)      # the round ends at its reply timeout; evaluation and the files take seconds
    finally:
        if p.poll() is None: deployment._kill(p)
    seconds = time.perf_counter() - t0
    print(f'flwr run with a malformed reply and a node killed in round 0 (reply timeout {timeout:g} s): {seconds:.1f} s')
    assert (tmp_path/'out'/'summary.json').exists(), f'flwr run exited {p.returncode}; log:\n' + deployment.log()[-4000:]
    assert p.returncode == 0, deployment.log()[-4000:]
    rounds, clients = read_table(tmp_path/'out'/'rounds.csv'), read_table(tmp_path/'out'/'clients.csv')
    assert rounds['selected'].tolist() == [3] and rounds['replied'].tolist() == [1], rounds
    assert rounds['rejected'].tolist() == [1] and rounds['failed'].tolist() == [1], rounds
    assert rounds['status'].tolist() == ['ok']
    assert rounds['seconds'].iloc[0] < timeout + 60, rounds      # it did not wait for the dead node beyond the timeout
    by_client = clients.set_index('client')
    assert by_client.loc[bad, 'status'] == 'rejected', by_client
    assert 'malformed reply: invalid arrays' in by_client.loc[bad, 'error'] and 'expected shape' in by_client.loc[bad, 'error']
    # several outcomes are correct for the dead node, and which one happens depends on how fast the SuperLink notices
    # it has gone: before the nodes were mapped to clients (no node plays the client), no longer connected when the
    # round starts (recorded at once), or dead after the train message was sent (no reply, or an error reply)
    error = str(by_client.loc[victim, 'error'])
    assert by_client.loc[victim, 'status'] == 'failed', by_client
    assert (error == 'no SuperNode for this partition-id' or 'unavailable: its SuperNode' in error
            or f'no reply within {timeout:g} s' in error or error.startswith('node error:')), error
    assert by_client.loc[survivor, 'status'] == 'ok' and by_client.loc[survivor, 'steps'] == 1, by_client
    # the survivor's update was aggregated: the global tensors of its blocks moved
    tensors, _ = load_checkpoint(tmp_path/'out')
    init = federation.fm.state()
    assert any(not torch.allclose(tensors[k].float(), init[k].float(), atol=1e-6) for k in init)


# one strategy on the simulation runtime: HierFedLoRA, the one with the most exchanges per round (the deployment tests
# above cover every family; the simulation runtime carries out the same messages)
@pytest.mark.parametrize('strategy', ['hierfedlora'])
def test_simulation_runtime_equals_engine(reference, tmp_path, strategy):
    "The same App on Flower's simulation runtime (Ray): three simulated SuperNodes, the same tensors."
    pytest.importorskip('ray', reason="Flower's simulation runtime needs the flower-simulation extra (ray)")
    over = {'allocation.strategy': strategy, 'output.dir': str(tmp_path/'out')}
    _experiment(tmp_path, **over)
    if strategy != EXPERIMENT['allocation']['strategy']:
        reference = run_experiment(make_config(EXPERIMENT, **{**over, 'output.dir': str(tmp_path/'ref')}))
    app = write_app(tmp_path/'app', experiment=str(tmp_path/'experiment.json'), options=ServerOptions(reply_timeout=180, node_wait=60))
    dep = LocalDeployment([], tmp_path/'deploy', simulation=3)
    seen = []
    try:
        dep.start()
        t0 = time.perf_counter()
        p = dep.run(app, timeout=300)
        print(f'flwr run on the simulation runtime (3 simulated nodes, 2 rounds): {time.perf_counter() - t0:.1f} s')
        seen = dep.processes()
        assert (tmp_path/'out'/'summary.json').exists(), f'flwr run exited {p.returncode}; log:\n' + dep.log()[-4000:]
    finally:
        dep.stop()
    _same_tensors(tmp_path/'out', reference)
    assert read_table(tmp_path/'out'/'rounds.csv')['replied'].tolist() == [2, 2]

