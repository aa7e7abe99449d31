import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from outlierbook.data.glue import TaskData
from outlierbook.errors import OutlierBookError
from outlierbook.methods.qat import qat
from outlierbook.quant.calibrate import calibrate
from outlierbook.quant.nodes import quantize_model


def test_qat_updates_weights_and_ranges_and_keeps_quantizing(char_tokenizer):
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                                     num_attention_heads=2, intermediate_size=32,
                                                     max_position_embeddings=32, num_labels=2))
    tok = char_tokenizer
    texts = ["good film", "bad film", "great", "awful plot", "fine acting", "dull"] * 4
    train = TaskData("sst2", "train", texts, None, [1, 0, 1, 0, 1, 0] * 4)
    qm = quantize_model(model.eval(), weight_bits=4, act_bits=8)
    calibrate(qm, [tok(texts[:8])])
    w0 = model.bert.encoder.layer[0].intermediate.dense.parametrizations.weight.original.detach().clone()
    s0 = qm.node("layer0.ffn.gelu").quantizer.scale.clone()
    losses = qat(qm, train, tok, steps=4, batch_size=6, lr=1e-2, progress=False)
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))
    assert not torch.equal(model.bert.encoder.layer[0].intermediate.dense.parametrizations.weight.original, w0)
    assert not torch.equal(qm.node("layer0.ffn.gelu").quantizer.scale_param.detach(), s0)
    assert qm.mode == (True, True)
    with pytest.raises(OutlierBookError, match="training split"):
        qat(qm, TaskData("sst2", "dev", texts, None, [0] * len(texts)), tok, steps=1)


def test_qat_and_score_scores_before_and_after_and_always_unwraps(char_tokenizer):
    import types

    from outlierbook.methods.qat import qat_and_score
    from tiny_models import tiny_classifier

    tok = char_tokenizer
    texts = ["good film", "bad film", "great", "awful plot", "fine acting", "dull"] * 4
    train = TaskData("sst2", "train", texts, None, [1, 0, 1, 0, 1, 0] * 4)
    model = tiny_classifier(0, layers=1)
    dev = tok(texts[:6])

    def score(qm):
        with torch.no_grad():
            return float(qm(**dev).logits[:, 1].sum())

    setup = types.SimpleNamespace(calibration=train, tokenizer=tok, score=score)
    from outlierbook.recipe import Recipe, quantize

    qm = quantize(model, Recipe(bits="W4A8"), [dev])
    ptq = score(qm)
    out = qat_and_score(qm, setup, steps=3, batch_size=6, lr=1e-2, progress=False)
    assert out["ptq"] == ptq and out["value"] != ptq and out["final_loss"] > 0
    assert not hasattr(model.bert.encoder.layer[0].intermediate.dense, "parametrizations")  # unwrapped
    qm = quantize(model, Recipe(bits="W4A8"), [dev])
    bad = types.SimpleNamespace(calibration=TaskData("sst2", "dev", texts, None, [0] * 24), tokenizer=tok, score=score)
    with pytest.raises(OutlierBookError):
        qat_and_score(qm, bad, steps=1, progress=False)
    assert not hasattr(model.bert.encoder.layer[0].intermediate.dense, "parametrizations")  # unwrapped on error too


def test_qat_steps_are_a_count_or_one_epoch_of_the_training_split():
    from outlierbook.errors import ConfigError
    from outlierbook.methods.qat import resolve_steps

    assert resolve_steps("epoch", 67349, 32) == 2105 and resolve_steps("epoch", 64, 32) == 2
    assert resolve_steps(300, 67349, 32) == 300
    for bad in (0, "epochs", 2.5, True):
        with pytest.raises(ConfigError, match="positive int or 'epoch'"):
            resolve_steps(bad, 100, 32)
