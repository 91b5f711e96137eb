#!/usr/bin/env python
"""Memory and compute of each capacity class under each allocation pattern, against full LoRA and HetLoRA.

For the default MiniLM (batch 32, sequence 128) and the ViT-B/16-sized random model (batch 32; on CPU a smaller
batch is measured and the batch-32 figures come from the estimator's fit, which is linear in the batch), every
allocation is run for real (one measured step plus timed steps, `fedhello_nb.memory.measure_memory`) and estimated
(`MemoryEstimator`). Printed: activation memory and step time as ratios to full LoRA, measured and estimated side by
side, the RGD expectations, and Fed-HeLLo's Bottleneck allocation against HetLoRA at equal trainable-parameter
budgets (the paper reports 1.55 GB less memory and 38.41% less compute than rank-based methods).

    python bench/memory_compute.py                   # the full benchmark (minutes on CPU)
    python bench/memory_compute.py --vit-batch 2     # a smaller measured ViT batch on a slow CPU
    python bench/memory_compute.py --tiny            # tiny random models, seconds (the test suite runs this)
"""
from __future__ import annotations
from fedhello_nb.config import LoraSettings
import argparse, os, sys, time
os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')
import numpy as np
import pandas as pd
import torch
from fedhello_nb.model import FedLoraModel, attach_lora, tiny_bert, tiny_vit
from fedhello_nb.allocation import scale_capacities
from fedhello_nb.rank_baselines import class_ranks
from fedhello_nb.memory import (Allocation, MemoryEstimator, build_model, measure_memory, expected_report,
                                pattern_allocations, format_bytes)

PAPER = 'paper (ViT-B/16, CIFAR-100): 1.55 GB less memory and 38.41% less compute than rank-based methods'
MiB = 2 ** 20


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--tiny', action='store_true', help='tiny random BERT and ViT at small batches (a few seconds)')
    ap.add_argument('--text-model', default='all-MiniLM-L6-v2', help='text backbone (a load_model name)')
    ap.add_argument('--batch', type=int, default=32, help='text batch (measured)')
    ap.add_argument('--seq-len', type=int, default=128, help='text sequence length')
    ap.add_argument('--vit-batch', type=int, default=None,
                    help='ViT batch that is measured (default: 32 on CUDA, 4 on CPU)')
    ap.add_argument('--vit-target-batch', type=int, default=32,
                    help='ViT batch the figures are reported at (from the linear fit when not measured)')
    ap.add_argument('--rank', type=int, default=16, help='LoRA rank of Fed-HeLLo layers (and of full LoRA)')
    ap.add_argument('--repeats', type=int, default=3, help='timed steps per allocation (median reported; 0: no timing)')
    ap.add_argument('--patterns', default='triangle,inverted_triangle,bottleneck,uniform')
    ap.add_argument('--skip-vit', action='store_true', help='only the text model')
    ap.add_argument('--device', default='auto', choices=('auto', 'cpu', 'cuda'))
    ap.add_argument('--threads', type=int, default=None, help='torch CPU threads (1 is fastest on shared cores)')
    args = ap.parse_args(argv)
    for name in ('batch', 'seq_len', 'vit_target_batch', 'rank', 'repeats'):
        low = 0 if name == 'repeats' else 1        # --repeats 0 measures memory without timing
        if getattr(args, name) < low: ap.error(f'--{name.replace("_", "-")} must be >= {low}')
    if args.vit_batch is not None and args.vit_batch < 1: ap.error('--vit-batch must be >= 1')
    return args


def cases(args, device):
    "(title, model, measured batch, reported batch, seq_len) for each backbone."
    lora = LoraSettings(r=args.rank)
    if args.tiny:
        lora = LoraSettings(r=4)
        yield 'tiny-bert (L=4, hidden 32)', FedLoraModel(attach_lora(tiny_bert(3), lora), None, lora), 4, 4, 16
        if not args.skip_vit:
            yield 'tiny-vit (L=4, 32x32 in 8x8 patches)', FedLoraModel(attach_lora(tiny_vit(3), lora), None, lora), 2, 4, 1
        return
    yield f'{args.text_model}', build_model(args.text_model, lora), args.batch, args.batch, args.seq_len
    if not args.skip_vit:
        vb = args.vit_batch or (args.vit_target_batch if device.type == 'cuda' else 4)
        yield 'ViT-B/16-sized, random weights (L=12, 224x224)', build_model('vit-b16-random', lora), vb, args.vit_target_batch, 1


def run_case(title, fm, batch, target, seq_len, args, device, out=print):
    if device.type == 'cuda': fm.model.to(device)
    t0 = time.time()
    est = MemoryEstimator.calibrate(fm)
    L, r = est.num_layers, est.rank
    caps = scale_capacities(L)
    patterns = [p for p in args.patterns.split(',') if p]
    allocs = pattern_allocations(L, patterns, caps, r=r)
    out(f'\n=== {title}: L={L}, LoRA rank {r} on query/value, capacities {caps}, device {device.type} ===')
    fit_note = '' if batch == target else f' (measured at batch {batch}; batch-{target} figures from the estimator, linear in the batch)'
    out(f'calibration {time.time() - t0:.1f} s; {len(allocs)} allocations measured at batch {batch}{fit_note}')
    rows, meas = [], {}
    for label, alloc in allocs.items():
        m = measure_memory(fm, alloc, batch, seq_len, time_steps=args.repeats)
        e, et = est.estimate(alloc, batch, seq_len), est.estimate(alloc, target, seq_len)
        meas[label] = (m, e, et)
    fm_, fe_, ft_ = meas['full LoRA']
    for label, (m, e, et) in meas.items():
        rows.append({'allocation': label, 'blocks': Allocation(m.blocks).describe().replace(' + head', '').replace('blocks ', ''),
                     'rank': m.rank, 'shallowest': m.shallowest,
                     f'act MiB @{batch} meas': m.activations / MiB, 'est': e.activations / MiB,
                     'err %': 100 * (e.activations / m.activations - 1),
                     f'act MiB @{target}': et.activations / MiB, f'peak MiB @{target}': et.peak / MiB,
                     'act ratio meas': m.activations / fm_.activations, 'act ratio est': e.activations / fe_.activations,
                     'step s': m.step_seconds, 'time ratio meas': (m.step_seconds / fm_.step_seconds) if m.step_seconds else np.nan,
                     'FLOP ratio est': e.flops / fe_.flops})
    table = pd.DataFrame(rows)
    out(table.to_string(index=False, float_format=lambda x: f'{x:.3f}'))
    if device.type == 'cuda':
        out('CUDA peak (max_memory_allocated) per allocation: ' +
            ', '.join(f'{k}: {format_bytes(v[0].peak)}' for k, v in meas.items()))
    # RGD expectations (estimate): the expected memory and FLOPs over the sampled sets
    rgd = []
    for p in patterns:
        for c in caps:
            x = expected_report(est, c, p, caps, None, target, seq_len)
            rgd.append({'pattern': p, 'capacity': c, 'E[shallowest]': x.shallowest, f'E[act] MiB @{target}': x.activations / MiB,
                        'act ratio': x.activations / ft_.activations, 'FLOP ratio': x.flops / ft_.flops})
    out(f'\nRGD-HLA expectations (estimate, RoC 1:1:1, batch {target}):')
    out(pd.DataFrame(rgd).to_string(index=False, float_format=lambda x: f'{x:.3f}'))
    # Fed-HeLLo Bottleneck against HetLoRA at equal trainable-parameter budgets
    ranks = class_ranks(r, caps, L)
    cmp = []
    for c, rk in zip(caps, ranks):
        het_label, gd_label = f'HetLoRA c={c}', f'bottleneck c={c}'
        het = meas.get(het_label, meas['full LoRA'])
        gd = meas.get(gd_label, meas['full LoRA'])
        rg = expected_report(est, c, 'bottleneck', caps, None, target, seq_len)
        cmp.append({'capacity': c, 'HetLoRA rank': rk,
                    'GD peak saved MiB': (het[2].peak - gd[2].peak) / MiB,
                    'RGD peak saved MiB': (het[2].peak - rg.peak) / MiB,
                    'GD act saved %': 100 * (1 - gd[0].activations / het[0].activations),
                    'GD FLOPs saved %': 100 * (1 - gd[1].flops / het[1].flops),
                    'RGD FLOPs saved %': 100 * (1 - rg.flops / het[2].flops),
                    'GD time saved % (meas)': 100 * (1 - gd[0].step_seconds / het[0].step_seconds) if args.repeats else np.nan,
                    'trainable GD/Het': gd[0].trainable / het[0].trainable})
    cmp = pd.DataFrame(cmp)
    mean = cmp.drop(columns=['capacity', 'HetLoRA rank']).mean()
    out(f'\nFed-HeLLo Bottleneck vs HetLoRA at equal trainable-parameter budgets (memory at batch {target}):')
    out(cmp.to_string(index=False, float_format=lambda x: f'{x:.2f}'))
    out(f'mean over the classes (RoC 1:1:1): peak saved GD {mean["GD peak saved MiB"]:.1f} MiB, RGD '
        f'{mean["RGD peak saved MiB"]:.1f} MiB; FLOPs saved GD {mean["GD FLOPs saved %"]:.2f}%, RGD '
        f'{mean["RGD FLOPs saved %"]:.2f}%; measured step time saved GD {mean["GD time saved % (meas)"]:.2f}%')
    inv = meas.get(f'inverted_triangle c={caps[0]}')
    if inv is not None:
        out(f'for contrast, Inverted Triangle at capacity {caps[0]}: activations {inv[0].activations / fm_.activations:.3f} '
            f'of full LoRA (measured), step time {inv[0].step_seconds / fm_.step_seconds:.3f}' if args.repeats else '')
    out(PAPER)
    return table, cmp


def main(argv=None):
    args = parse_args(argv)
    if args.threads: torch.set_num_threads(args.threads)
    device = torch.device('cuda' if args.device == 'cuda' or (args.device == 'auto' and torch.cuda.is_available()) else 'cpu')
    print(f'memory_compute: torch {torch.__version__}, {torch.get_num_threads()} CPU threads, device {device}')
    t0 = time.time()
    for title, fm, batch, target, seq_len in cases(args, device):
        run_case(title, fm, batch, target, seq_len, args, device)
        del fm
    print(f'\ndone in {time.time() - t0:.0f} s')


if __name__ == '__main__':
    main()
