"""Pre-training loop: learns, checkpoints atomically, and resumes to the same result."""

import pytest
import torch

from outlierbook.errors import ConfigError
from outlierbook.models.attention_variants import AttentionVariant
from outlierbook.models.pretrain import PretrainConfig, mask_tokens, pretrain


def test_masking_follows_bert():
    class T:
        mask_token_id = 3

        def __len__(self):
            return 50

    ids = torch.randint(10, 50, (200, 50))
    b = mask_tokens(ids, T(), torch.Generator().manual_seed(0))
    chosen = b["labels"] != -100
    assert 0.13 < chosen.float().mean() < 0.17
    assert torch.equal(b["labels"][chosen], ids[chosen])
    masked = (b["input_ids"] == 3) & chosen
    assert 0.75 < masked.sum() / chosen.sum() < 0.85
    assert torch.equal(b["input_ids"][~chosen], ids[~chosen])


@pytest.mark.parametrize("kind,variant", [("mlm", AttentionVariant()), ("clm", AttentionVariant(gate="linear", pi_init=0.25))])
def test_pretraining_learns_and_resumes_identically(tok_and_blocks, tmp_path, monkeypatch, kind, variant):
    tok, blocks = tok_and_blocks
    cfg = PretrainConfig(kind=kind, variant=variant, hidden=32, layers=2, heads=2, ffn=64, seq_len=16, steps=12,
                         batch_size=8, lr=3e-3, dropout=0.1, checkpoint_every=6, track_every=6)
    monkeypatch.setenv("OUTLIERBOOK_CACHE", str(tmp_path / "a"))
    full, hist = pretrain(cfg, tok, blocks, track=lambda m: {"n": 1}, progress=False)
    assert len(hist["loss"]) == 12 and hist["loss"][-1] < hist["loss"][0]
    assert [t["step"] for t in hist["track"]] == [6, 12]
    # the same run interrupted after the step-6 checkpoint, then resumed from it
    monkeypatch.setenv("OUTLIERBOOK_CACHE", str(tmp_path / "b"))
    calls = {"n": 0}

    class Stop(Exception):
        pass

    def track(m):
        calls["n"] += 1
        if calls["n"] == 2:  # at step 12, before its checkpoint
            raise Stop
        return {"n": 1}

    with pytest.raises(Stop):
        pretrain(cfg, tok, blocks, track=track, progress=False)
    assert (cfg.directory() / "checkpoint" / "model.safetensors").is_file()
    resumed, hist2 = pretrain(cfg, tok, blocks, track=lambda m: {"n": 1}, progress=False)
    assert hist2["loss"][:6] == hist["loss"][:6] and len(hist2["loss"]) == 12
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-5), k


def test_a_crash_while_checkpointing_resumes_from_the_last_complete_set(tok_and_blocks, tmp_path, monkeypatch):
    """Weights, optimizer state and history are one set: a crash after the new weights are written but
    before the optimizer state resumes from the step-6 set (the landed code mixed step-12 weights with
    the step-6 optimizer), and the state is read with weights_only=True."""
    import outlierbook.models.pretrain as pt

    tok, blocks = tok_and_blocks
    cfg = PretrainConfig(kind="mlm", hidden=32, layers=2, heads=2, ffn=64, seq_len=16, steps=12, batch_size=8,
                         lr=3e-3, dropout=0.1, checkpoint_every=6, track_every=6)
    monkeypatch.setenv("OUTLIERBOOK_CACHE", str(tmp_path / "a"))
    full, hist = pretrain(cfg, tok, blocks, progress=False)
    monkeypatch.setenv("OUTLIERBOOK_CACHE", str(tmp_path / "b"))
    real_save, saves = torch.save, {"n": 0}

    class Killed(Exception):
        pass

    def save_then_die(obj, path, *a, **k):
        saves["n"] += 1
        if saves["n"] == 2:  # the step-12 checkpoint: its weights are on disk already
            raise Killed
        return real_save(obj, path, *a, **k)

    monkeypatch.setattr(pt.torch, "save", save_then_die)
    with pytest.raises(Killed):
        pretrain(cfg, tok, blocks, progress=False)
    monkeypatch.setattr(pt.torch, "save", real_save)
    state = torch.load(cfg.directory() / "checkpoint" / "state.pt", weights_only=True)
    assert state["step"] == 6
    assert not [p for p in cfg.directory().iterdir() if p.name.startswith(".")]  # no half-written set left
    loads = []
    real_load = torch.load
    monkeypatch.setattr(pt.torch, "load", lambda *a, **k: loads.append(k.get("weights_only")) or real_load(*a, **k))
    resumed, hist2 = pretrain(cfg, tok, blocks, progress=False)
    assert loads == [True]
    assert hist2["loss"] == hist["loss"]
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-5), k


def test_config_errors():
    with pytest.raises(ConfigError):
        PretrainConfig(kind="seq2seq")
    with pytest.raises(ConfigError):
        PretrainConfig(hidden=30, heads=4)


def test_gamma_ramp_starts_from_softmax_and_ends_at_the_configured_gamma(tok_and_blocks, tmp_path, monkeypatch):
    from outlierbook.models.attention_variants import attention_modules

    tok, blocks = tok_and_blocks
    monkeypatch.setenv("OUTLIERBOOK_CACHE", str(tmp_path))
    seen = []
    cfg = PretrainConfig(kind="mlm", variant=AttentionVariant(softmax="clipped", alpha=4.0, seq_len=16), hidden=32,
                         layers=2, heads=2, ffn=64, seq_len=16, steps=8, batch_size=8, dropout=0.0, gamma_ramp=0.5,
                         track_every=1, checkpoint_every=8)
    model, _ = pretrain(cfg, tok, blocks, progress=False,
                        track=lambda m: seen.append(attention_modules(m)[0].outlierbook_gamma_scale) or {})
    assert seen == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0, 1.0, 1.0]  # scale used at steps 0..7
    assert all(m.outlierbook_gamma_scale == 1.0 for m in attention_modules(model))
    with pytest.raises(ConfigError):
        PretrainConfig(gamma_ramp=2.0)


def test_retrofitting_starts_from_the_pretrained_encoder_and_trains_the_head_alone_first(tok_and_blocks, tmp_path,
                                                                                         monkeypatch):
    """``init``: the pretrained encoder's weights, a new MLM head tied to its word embeddings; for
    ``freeze_encoder_steps`` only the head moves, then the encoder (and the variant's gates) learn too."""
    from transformers import BertConfig, BertModel

    from outlierbook.models.attention_variants import nearly_open_gate

    tok, blocks = tok_and_blocks
    torch.manual_seed(3)
    BertModel(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=16)).save_pretrained(tmp_path / "encoder")
    pretrained = BertModel.from_pretrained(tmp_path / "encoder")
    cfg = PretrainConfig(kind="mlm", variant=nearly_open_gate(), init=str(tmp_path / "encoder"), freeze_encoder_steps=3,
                         seq_len=16, steps=6, batch_size=8, lr=3e-3, checkpoint_every=6, track_every=3)
    assert cfg.key() != PretrainConfig(kind="mlm", variant=nearly_open_gate(), seq_len=16, steps=6, batch_size=8,
                                       lr=3e-3, checkpoint_every=6, track_every=3).key()
    monkeypatch.setenv("OUTLIERBOOK_CACHE", str(tmp_path / "cache"))

    def track(model):
        enc = dict(model.bert.named_parameters())
        with torch.no_grad():  # the masked LM has no pooler: compare every parameter both models have
            moved = max(float((enc[n] - p).abs().max()) for n, p in pretrained.named_parameters() if n in enc)
            gate = model.bert.encoder.layer[0].attention.self.outlierbook_gate.bias
            return {"encoder_moved": moved, "gate_moved": float((gate - 0.0).abs().max()),
                    "head": float(model.cls.predictions.transform.dense.weight.abs().sum())}

    model, hist = pretrain(cfg, tok, blocks, track=track, progress=False)
    at3, at6 = hist["track"]
    assert at3["step"] == 3 and at3["encoder_moved"] == 0.0 and at3["gate_moved"] < 1e-6  # only the head learnt
    assert at6["encoder_moved"] > 0 and at6["gate_moved"] > 0 and at6["head"] != at3["head"]
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight  # tied
    with pytest.raises(ConfigError, match="kind='mlm' with init"):
        PretrainConfig(kind="clm", init="x")
    with pytest.raises(ConfigError, match="freeze_encoder_steps must lie in"):
        PretrainConfig(init="x", steps=5, freeze_encoder_steps=6)


def test_the_masked_lm_loss_projects_only_labelled_tokens_and_equals_the_models_own():
    from transformers import BertConfig, BertForMaskedLM

    from outlierbook.models.training import hf_loss, masked_lm_loss

    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                       intermediate_size=32, max_position_embeddings=16)).eval()
    ids = torch.randint(5, 50, (3, 10))
    labels = torch.full_like(ids, -100)
    labels[:, ::4] = ids[:, ::4]
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    ours, theirs = masked_lm_loss(model, batch), hf_loss(model, batch)
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-5)
    g_ours = torch.autograd.grad(ours, list(model.parameters()), allow_unused=True)
    g_theirs = torch.autograd.grad(hf_loss(model, batch), list(model.parameters()), allow_unused=True)
    for a, b in zip(g_ours, g_theirs):
        assert (a is None) == (b is None) and (a is None or torch.allclose(a, b, atol=1e-6))
    seen = []
    model.cls.predictions.decoder.register_forward_hook(lambda m, i, o: seen.append(o.shape[0]))
    masked_lm_loss(model, batch)
    assert seen == [int((labels != -100).sum())]  # 9 rows projected, not 30
