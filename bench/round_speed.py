"""Round speed of the fedhello_nb engine against a naive implementation of the same algorithm.

The naive round does what the released Fed-HeLLo code does: a deep copy of the model per client, "freezing" by a
zero learning rate (every LoRA tensor still requires a gradient, so backward runs through every block), and every
sequence padded to the maximum length. Both rounds use the same data, model, clients, allocations, batches and
local steps; the script prints their times side by side in one run, and the ratio.

It also prints the engine's overhead against the bare compute of the same local steps (forward, backward and
optimizer step on pre-made batches), and the per-step time of each capacity class under the inverted-triangle and
bottleneck patterns against full LoRA.

    .venv/bin/python bench/round_speed.py            # default MiniLM, default task
    .venv/bin/python bench/round_speed.py --tiny     # seconds; what the test suite runs
"""
from __future__ import annotations
import argparse, copy, os, statistics, sys, tempfile, time
os.environ.setdefault('HF_HUB_OFFLINE', '1')
import numpy as np
import torch
import torch.nn.functional as F

from fedhello_nb.config import make_config
from fedhello_nb.runio import stream_seed
from fedhello_nb.engine import Federation, run_round, select_clients
from fedhello_nb.aggregate import ClientUpdate, layerwise_average
from fedhello_nb.allocation import gd_sets
from fedhello_nb.data import PadCollator, make_loader


def settings(tiny:bool, args) -> dict:
    model = 'tiny-bert' if tiny else args.model
    return dict(model={'name': model, 'max_length': args.max_length},
                data={'max_train': 600 if tiny else args.max_train, 'max_test': 50},
                clients={'num_clients': args.clients, 'per_round': args.per_round},
                allocation={'strategy': 'rgd', 'pattern': 'bottleneck'},
                train={'rounds': 1, 'local_steps': 2 if tiny else args.steps, 'batch_size': args.batch_size,
                       'lr': 5e-3, 'seed': 0},
                output={'quiet': True, 'dir': tempfile.mkdtemp()})


def client_batches(fed, ins, pad_to=None):
    "The batches a client draws in its local steps (the seed of train_client's batches stream), optionally padded to `pad_to`."
    seed = stream_seed(ins.seed, 'batches')
    loader = make_loader(fed.train_set, fed.client_indices(ins.client), ins.train.batch_size, shuffle=True, seed=seed)
    if pad_to is not None:
        base = fed.train_set.collate
        def collate(items):
            b = base(items)
            extra = pad_to - b['input_ids'].shape[1]
            if extra > 0:
                b['input_ids'] = F.pad(b['input_ids'], (0, extra), value=base.pad_token_id)
                b['attention_mask'] = F.pad(b['attention_mask'], (0, extra), value=0)
                if 'token_type_ids' in b: b['token_type_ids'] = F.pad(b['token_type_ids'], (0, extra), value=0)
            return b
        loader = torch.utils.data.DataLoader(loader.dataset, batch_size=loader.batch_size, shuffle=True,
                                             collate_fn=collate, generator=torch.Generator().manual_seed(seed))
    out, it = [], iter(loader)
    for _ in range(ins.train.steps_for(len(fed.client_indices(ins.client)))):
        try: out.append(next(it))
        except StopIteration: it = iter(loader); out.append(next(it))
    return out


def naive_round(fed, t, state, max_length):
    "The released code's way: a model copy per client, zero-lr freezing, padding to max_length."
    cfg = fed.config
    clients = select_clients(cfg.clients.num_clients, cfg.clients.per_round, cfg.train.seed, t)
    amap, instructions = fed.strategy.configure_train(t, clients, context=fed.fm)
    lora_names = {n for b in fed.fm.block_params for n in b}
    updates = []
    for ins in instructions:
        model = copy.deepcopy(fed.fm.model)
        params = dict(model.named_parameters())
        with torch.no_grad():
            for k, v in state.items(): params[k].copy_(v)
        allowed = {n for b in ins.blocks for n in fed.fm.block_params[b]} | set(fed.fm.head_params)
        for n, p in params.items(): p.requires_grad_(n in lora_names or n in fed.fm.head_params)
        groups = [{'params': [params[n] for n in sorted(allowed)], 'lr': ins.train.lr},
                  {'params': [params[n] for n in sorted(lora_names - allowed)], 'lr': 0.0}]
        opt = torch.optim.AdamW(groups, weight_decay=ins.train.weight_decay)
        torch.manual_seed(ins.seed)
        model.train()
        for batch in client_batches(fed, ins, pad_to=max_length):
            labels = batch.pop('labels')
            F.cross_entropy(model(**batch).logits, labels).backward()
            opt.step(); opt.zero_grad(set_to_none=True)
        delta = {n: params[n].detach() - state[n] for n in allowed}
        updates.append(ClientUpdate(ins.client, delta, len(fed.client_indices(ins.client))))
        del model, opt
    return layerwise_average(state, updates)[0]


def bare_compute(fed, t, state):
    "Only the local steps of the same round's clients on pre-made batches: forward, backward, optimizer step."
    cfg = fed.config
    clients = select_clients(cfg.clients.num_clients, cfg.clients.per_round, cfg.train.seed, t)
    _, instructions = fed.strategy.configure_train(t, clients, context=fed.fm)
    prepared = [(ins, client_batches(fed, ins)) for ins in instructions]
    fed.fm.load_state(state)
    model, total = fed.fm.model, 0.0
    model.train()
    for ins, batches in prepared:
        fed.fm.set_trainable(ins.blocks, ins.train_head)
        opt = torch.optim.AdamW(fed.fm.trainable_parameters().values(), lr=ins.train.lr, weight_decay=ins.train.weight_decay)
        t0 = time.perf_counter()
        for batch in batches:
            labels = batch.pop('labels')
            F.cross_entropy(model(**batch).logits, labels).backward()
            opt.step(); opt.zero_grad(set_to_none=True)
        total += time.perf_counter() - t0
    fed.fm.set_trainable([], train_head=False)
    return total


def step_time(fed, blocks, batch, repeats):
    "Median seconds of one local step training `blocks` (and the head) on `batch`."
    fed.fm.set_trainable(blocks, True)
    opt = torch.optim.AdamW(fed.fm.trainable_parameters().values(), lr=1e-3)
    model, times = fed.fm.model, []
    model.train()
    for i in range(repeats + 1):
        b = dict(batch); labels = b.pop('labels')
        t0 = time.perf_counter()
        F.cross_entropy(model(**b).logits, labels).backward()
        opt.step(); opt.zero_grad(set_to_none=True)
        if i: times.append(time.perf_counter() - t0)    # the first step warms up
    fed.fm.set_trainable([], train_head=False)
    return statistics.median(times)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--tiny', action='store_true', help='tiny random BERT, a few seconds (the test suite)')
    ap.add_argument('--model', default='all-MiniLM-L6-v2')
    ap.add_argument('--max-length', type=int, default=128, help='the naive round pads every sequence to this')
    ap.add_argument('--max-train', type=int, default=2000)
    ap.add_argument('--clients', type=int, default=20)
    ap.add_argument('--per-round', type=int, default=5)
    ap.add_argument('--steps', type=int, default=5)
    ap.add_argument('--batch-size', type=int, default=16)
    ap.add_argument('--rounds', type=int, default=2, help='rounds timed (alternating engine and naive)')
    ap.add_argument('--repeats', type=int, default=5, help='timed steps per class for the per-step table')
    args = ap.parse_args(argv)
    if args.tiny: args.rounds, args.repeats = 1, 2
    torch.manual_seed(0)
    fed = Federation.from_config(make_config(settings(args.tiny, args)))
    state = fed.fm.state()
    run_round(fed, 0, state)                      # warm-up (first-call costs of both paths)
    eng, nai, bare = [], [], []
    for t in range(args.rounds):
        t0 = time.perf_counter(); run_round(fed, t, state); eng.append(time.perf_counter() - t0)
        t0 = time.perf_counter(); naive_round(fed, t, state, args.max_length); nai.append(time.perf_counter() - t0)
        bare.append(bare_compute(fed, t, state))
    e, n, b = sum(eng), sum(nai), sum(bare)
    L = fed.num_blocks
    print(f'model={fed.config.model.name} L={L} clients/round={args.per_round} local steps={fed.config.train.local_steps} '
          f'batch={args.batch_size} rounds timed={args.rounds} torch threads={torch.get_num_threads()}')
    print(f'round time   engine {e/args.rounds:8.3f} s | naive (copy per client, zero-lr freezing, pad to {args.max_length}) '
          f'{n/args.rounds:8.3f} s | naive/engine = {n/e:5.2f}x')
    print(f'engine overhead over bare compute of the same steps: {100*(e-b)/b:5.1f}%  (engine {e:.3f} s, bare {b:.3f} s)')

    # per-step time of each capacity class against full LoRA, on one batch of typical length
    ins0 = fed.strategy.configure_train(0, [0], context=fed.fm)[1][0]
    batch = client_batches(fed, ins0)[0]
    fed.fm.load_state(state)
    full = step_time(fed, list(range(L)), batch, args.repeats)
    caps = fed.plan.capacities
    print(f'\nper-step time against full LoRA (all {L} blocks: {1000*full:.1f} ms), batch {tuple(batch["input_ids"].shape)}')
    print(f'{"pattern":<18} {"capacity":>8} {"blocks":<24} {"shallowest":>10} {"ms/step":>8} {"ratio":>6}')
    for pattern in ('inverted_triangle', 'bottleneck'):
        for c, blocks in zip(caps, gd_sets(caps, pattern, L)):
            s = step_time(fed, blocks, batch, args.repeats)
            print(f'{pattern:<18} {c:>8} {" ".join(map(str, blocks)):<24} {min(blocks):>10} {1000*s:>8.1f} {s/full:>6.2f}')
    return {'naive_over_engine': n / e, 'overhead': (e - b) / b, 'full_step': full}


if __name__ == '__main__':
    main()
