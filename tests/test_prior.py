"""Tests of the stage-2 prior (tiny GPT-2 models, CPU, a few seconds in all)."""

import math

import pytest
import torch
import torch.nn.functional as F
from transformers import GPT2LMHeadModel

from vqvae_transformer.models.prior import (
    CodeOnlyLogitsProcessor,
    PriorVocabulary,
    build_prior,
    build_prior_config,
    grid_position_init,
    grid_to_sequence,
    make_prior_batch,
    prior_loss,
    sample_tokens,
    sequence_to_grid,
    vocabulary_from_config,
)

K = 16


def tiny_prior(num_users=3, grid=(3, 3), n_layer=1, dropout=0.0, seed=0, token_order="column"):
    torch.manual_seed(seed)
    config = build_prior_config(K, num_users, grid, n_layer=n_layer, n_embd=32, n_head=4, dropout=dropout,
                                token_order=token_order)
    return build_prior(config)


def random_batch(num_users=3, grid=(3, 3), batch_size=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, K, (batch_size, *grid), generator=g)  # (B, h, w)
    labels = torch.randint(0, num_users, (batch_size,), generator=g)  # (B,)
    return tokens, labels


@pytest.mark.parametrize("token_order", ["row", "column"])
def test_position_embeddings_start_from_the_token_grid_layout(token_order):
    """The position of grid cell (r, c) carries row r in the first half of the channels and column c in the
    second: position 1 + r*w + c in row order, 1 + c*h + r in column order."""
    h, w, d = 3, 4, 32
    prior = tiny_prior(grid=(h, w), token_order=token_order)
    wpe = prior.transformer.wpe.weight.detach()  # (1 + h*w, d)
    assert torch.equal(wpe, grid_position_init(h, w, d, prior.config.initializer_range, token_order))
    assert torch.equal(wpe[0], torch.zeros(d))  # the user token
    if token_order == "row":
        grid = wpe[1:].view(h, w, d)
    else:
        grid = wpe[1:].view(w, h, d).transpose(0, 1)  # (h, w, d)
    for r in range(h):
        for c in range(w):
            assert torch.equal(grid[r, c, : d // 2], grid[r, 0, : d // 2])  # same row, same row half
            assert torch.equal(grid[r, c, d // 2 :], grid[0, c, d // 2 :])  # same column, same column half
    assert not torch.equal(grid[0, 0], grid[1, 0]) and not torch.equal(grid[0, 0], grid[0, 1])
    assert wpe.abs().max() <= prior.config.initializer_range + 1e-7


def test_grid_and_sequence_orders():
    """Row order reads the grid row by row, column order column by column (time order for a spectrogram)."""
    grid = torch.arange(6).view(1, 2, 3)  # (1, h=2, w=3): [[0, 1, 2], [3, 4, 5]]
    assert grid_to_sequence(grid, "row").tolist() == [[0, 1, 2, 3, 4, 5]]
    assert grid_to_sequence(grid, "column").tolist() == [[0, 3, 1, 4, 2, 5]]
    for order in ("row", "column"):
        assert torch.equal(sequence_to_grid(grid_to_sequence(grid, order), (2, 3), order), grid)
    with pytest.raises(ValueError, match="diagonal"):
        grid_to_sequence(grid, "diagonal")


# --- vocabulary and config -------------------------------------------------------------------------------


def test_vocabulary_layout():
    vocab = PriorVocabulary(K, 3)
    assert vocab.vocab_size == K + 3 + 1
    assert vocab.null_token == K + 3
    assert vocab.user_token(0) == K
    assert vocab.user_token(torch.tensor([0, 2])).tolist() == [K, K + 2]
    assert vocab.is_code(torch.tensor([0, K - 1, K, K + 3, -1])).tolist() == [True, True, False, False, False]
    with pytest.raises(ValueError, match="3"):
        vocab.user_token(torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="-1"):
        vocab.user_token(-1)


def test_config_fields_and_defaults():
    config = build_prior_config(K, 3, (2, 3), n_layer=1, n_embd=32, n_head=4)
    assert config.vocab_size == K + 4
    assert config.n_positions == 2 * 3 + 1
    assert config.codebook_size == K and config.num_users == 3
    assert tuple(config.token_grid) == (2, 3)
    assert config.user_ids == [1, 2, 3]
    assert config.eos_token_id is None and config.bos_token_id is None and config.pad_token_id is None
    assert config.token_order == "column"
    config = build_prior_config(K, 2, (2, 2), n_layer=1, n_embd=32, n_head=4, user_ids=[7, 12])
    assert config.user_ids == [7, 12]
    assert vocabulary_from_config(config) == PriorVocabulary(K, 2, "column")
    del config.token_order  # a prior saved before the attribute existed was trained in row order
    assert vocabulary_from_config(config) == PriorVocabulary(K, 2, "row")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(n_embd=30, n_head=4), "30"),
        (dict(codebook_size=0), "codebook_size.*0"),
        (dict(num_users=-2), "num_users.*-2"),
        (dict(token_grid=(0, 3)), r"token_grid.*\(0, 3\)"),
        (dict(token_grid=(3,)), "token_grid"),
        (dict(n_layer=0), "n_layer.*0"),
        (dict(dropout=1.5), "1.5"),
        (dict(user_ids=[1, 2]), r"\[1, 2\].*3"),
        (dict(user_ids=[4, 4, 5]), r"\[4, 4, 5\]"),
        (dict(token_order="diagonal"), "token_order.*diagonal"),
    ],
)
def test_bad_config_arguments(kwargs, match):
    args = dict(codebook_size=K, num_users=3, token_grid=(2, 2), n_layer=1, n_embd=32, n_head=4)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        build_prior_config(**args)


def test_bad_batch_and_sampling_arguments():
    prior = tiny_prior()
    vocab = vocabulary_from_config(prior.config)
    tokens, labels = random_batch()
    with pytest.raises(ValueError, match="5"):
        make_prior_batch(tokens, torch.tensor([0, 1, 5, 0]), vocab)
    with pytest.raises(ValueError, match=str(K)):
        make_prior_batch(torch.full_like(tokens, K), labels, vocab)
    with pytest.raises(ValueError, match="1.5"):
        make_prior_batch(tokens, labels, vocab, user_dropout=1.5)
    with pytest.raises(ValueError, match=r"\(4, 9\)"):
        make_prior_batch(tokens.reshape(4, 9), labels, vocab)
    with pytest.raises(ValueError, match="3"):
        sample_tokens(prior, [0, 3])
    with pytest.raises(ValueError, match="-1"):
        sample_tokens(prior, [-1])
    with pytest.raises(ValueError, match=r"\(4, 4\)"):
        sample_tokens(prior, [0], grid_shape=(4, 4))
    with pytest.raises(ValueError, match="temperature.*0"):
        sample_tokens(prior, [0], temperature=0.0)
    with pytest.raises(ValueError, match="top_p.*2"):
        sample_tokens(prior, [0], top_p=2.0)


# --- training batch ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("token_order", ["row", "column"])
def test_batch_layout(token_order):
    vocab = PriorVocabulary(K, 3, token_order)
    tokens, labels = random_batch(grid=(2, 3))
    batch = make_prior_batch(tokens, labels, vocab, user_dropout=0.0)
    input_ids, target = batch["input_ids"], batch["labels"]
    assert input_ids.shape == target.shape == (4, 2 * 3 + 1)
    assert input_ids.dtype == torch.long
    assert torch.equal(input_ids[:, 0], labels + K)
    codes = tokens.reshape(4, -1) if token_order == "row" else tokens.transpose(1, 2).reshape(4, -1)
    assert torch.equal(input_ids[:, 1:], codes)
    assert (target[:, 0] == -100).all()
    assert torch.equal(target[:, 1:], input_ids[:, 1:])


def test_loss_is_on_codes_and_shifted_once():
    prior = tiny_prior()
    prior.eval()
    vocab = vocabulary_from_config(prior.config)
    tokens, labels = random_batch()
    batch = make_prior_batch(tokens, labels, vocab, user_dropout=0.0)
    out = prior(**batch)
    logits = out.logits  # (B, T+1, V)
    # logits at position i predict input_ids[i+1]: c_1 from the user token, c_{i+1} from c_i.
    expected = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), batch["input_ids"][:, 1:].reshape(-1))
    torch.testing.assert_close(out.loss, expected)
    torch.testing.assert_close(prior_loss(prior, batch), expected)
    double_shifted = F.cross_entropy(
        logits[:, :-2].reshape(-1, logits.shape[-1]), batch["input_ids"][:, 2:].reshape(-1)
    )
    assert not torch.isclose(out.loss, double_shifted)


def test_user_dropout():
    vocab = PriorVocabulary(K, 3)
    tokens, labels = random_batch(batch_size=64)
    all_null = make_prior_batch(tokens, labels, vocab, user_dropout=1.0)["input_ids"][:, 0]
    assert (all_null == vocab.null_token).all()
    none_null = make_prior_batch(tokens, labels, vocab, user_dropout=0.0)["input_ids"][:, 0]
    assert torch.equal(none_null, labels + K)
    a = make_prior_batch(tokens, labels, vocab, 0.5, generator=torch.Generator().manual_seed(3))["input_ids"]
    b = make_prior_batch(tokens, labels, vocab, 0.5, generator=torch.Generator().manual_seed(3))["input_ids"]
    assert torch.equal(a, b)
    dropped = a[:, 0] == vocab.null_token
    assert 0 < int(dropped.sum()) < 64
    assert torch.equal(a[~dropped, 0], labels[~dropped] + K)
    assert torch.equal(a[:, 1:], tokens.transpose(1, 2).reshape(64, -1))  # the default column order


# --- sampling ---------------------------------------------------------------------------------------------


def test_code_only_processor():
    scores = torch.zeros(2, K + 4)
    out = CodeOnlyLogitsProcessor(K)(torch.zeros(2, 1, dtype=torch.long), scores)
    assert torch.isinf(out[:, K:]).all() and (out[:, K:] < 0).all()
    assert (out[:, :K] == 0).all()


@pytest.mark.parametrize("guidance_scale", [1.0, 3.0])
def test_sampling_emits_codes_only(guidance_scale):
    prior = tiny_prior()
    with torch.no_grad():  # make every non-code id overwhelmingly likely
        prior.lm_head.weight[K:] = 0.0
        prior.lm_head.weight[K:, 0] = 1.0
        prior.transformer.ln_f.weight.zero_()
        prior.transformer.ln_f.bias.zero_()
        prior.transformer.ln_f.bias[0] = 50.0  # logits: 50 for ids >= K, about ±1 for codes
    prompt = torch.full((2, 1), K)  # (B, 1) user token 0
    unmasked = prior.eval().generate(
        prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=4, do_sample=True, pad_token_id=K + 3
    )
    assert (unmasked[:, 1:] >= K).all()  # without the processor the model emits non-code ids
    samples = sample_tokens(prior, [0, 1, 2, 0], guidance_scale=guidance_scale, seed=0)
    assert samples.shape == (4, 3, 3)
    assert samples.dtype == torch.long
    assert ((samples >= 0) & (samples < K)).all()


def test_sampling_seed_mode_and_guidance():
    prior = tiny_prior(n_layer=2)
    with torch.no_grad():  # sharpen a random model so that user tokens and guidance matter
        for p in prior.parameters():
            p.mul_(20)
    prior.train()
    labels = torch.tensor([0, 1, 2, 1])
    rng_before = torch.get_rng_state()
    a = sample_tokens(prior, labels, seed=123)
    assert torch.equal(torch.get_rng_state(), rng_before)  # caller's RNG untouched
    assert prior.training  # previous mode restored
    b = sample_tokens(prior, labels, seed=123)
    assert torch.equal(a, b)
    assert a.shape == (4, 3, 3)
    assert torch.equal(sample_tokens(prior, labels, seed=123, use_cache=False), a)
    c = sample_tokens(prior, labels, seed=123, guidance_scale=3.0)
    assert c.shape == (4, 3, 3)
    assert not torch.equal(a, c)
    assert torch.equal(sample_tokens(prior, labels, seed=123, guidance_scale=3.0, use_cache=False), c)
    d = sample_tokens(prior, labels, grid_shape=(2, 2), seed=1, top_k=5, top_p=0.9, temperature=0.7)
    assert d.shape == (4, 2, 2)


@pytest.mark.parametrize("token_order", ["row", "column"])
def test_overfit_two_users(token_order):
    """Trained on one grid per user, the prior gives each user's grid back, as a row-major grid, in both orders."""
    grid = (3, 4)
    prior = tiny_prior(num_users=2, grid=grid, n_layer=2, token_order=token_order)
    vocab = vocabulary_from_config(prior.config)
    g = torch.Generator().manual_seed(0)
    targets = torch.randint(0, K, (2, *grid), generator=g)  # one fixed grid per user
    tokens = targets.repeat(8, 1, 1)  # (16, 3, 4)
    labels = torch.tensor([0, 1]).repeat(8)  # (16,)
    batch = make_prior_batch(tokens, labels, vocab, user_dropout=0.0)
    optimizer = torch.optim.Adam(prior.parameters(), lr=1e-2)
    prior.train()
    for _ in range(150):
        loss = prior_loss(prior, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.05
    samples = sample_tokens(prior, torch.tensor([0, 1, 1, 0]), top_k=1, seed=0)
    assert torch.equal(samples, targets[[0, 1, 1, 0]])
    samples = sample_tokens(prior, torch.tensor([0, 1]), temperature=0.05, seed=1)
    assert torch.equal(samples, targets)
    # The user-token gain: without the user token the first code is at best a coin flip between the two grids
    # (the rest follows from it), so the null-user loss exceeds the user loss by at least ~log(2) / 12 nats/code.
    from vqvae_transformer.training.train_prior import validation_loss

    prior.eval()
    with_user = validation_loss(prior, tokens, labels, batch_size=5)
    gain = validation_loss(prior, tokens, labels, batch_size=5, null_user=True) - with_user
    assert with_user < 0.05 and gain > 0.5 * math.log(2) / 12


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    config = build_prior_config(K, 2, (2, 3), n_layer=1, n_embd=32, n_head=4, user_ids=[3, 9])
    prior = build_prior(config).eval()
    prior.save_pretrained(tmp_path)
    loaded = GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    assert loaded.config.codebook_size == K
    assert loaded.config.num_users == 2
    assert tuple(loaded.config.token_grid) == (2, 3)
    assert loaded.config.user_ids == [3, 9]
    assert loaded.config.vocab_size == K + 3 and loaded.config.n_positions == 7
    tokens, labels = random_batch(num_users=2, grid=(2, 3))
    input_ids = make_prior_batch(tokens, labels, vocabulary_from_config(loaded.config), 0.0)["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids).logits, prior(input_ids).logits, rtol=0, atol=0)
    assert sample_tokens(loaded, [0, 1], seed=0).shape == (2, 2, 3)
    assert torch.equal(sample_tokens(loaded, [0, 1], seed=0), sample_tokens(prior, [0, 1], seed=0))


def test_prior_activation_is_gpt2_gelu_as_one_kernel_so_old_and_new_priors_compute_the_same():
    """Priors are built with the fused tanh GELU; one saved with GPT-2's ``gelu_new`` (before) and the same weights
    gives the same logits, so either kind of saved prior samples alike."""
    from transformers import GPT2Config

    config = build_prior_config(16, 3, (2, 3), n_layer=2, n_embd=16, n_head=2)
    assert config.activation_function == "gelu_pytorch_tanh"
    torch.manual_seed(0)
    prior = build_prior(config).eval()
    former = build_prior(GPT2Config.from_dict({**config.to_dict(), "activation_function": "gelu_new"})).eval()
    former.load_state_dict(prior.state_dict())
    tokens, labels = random_batch(num_users=3, grid=(2, 3))
    input_ids = make_prior_batch(tokens, labels, vocabulary_from_config(config), 0.0)["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(prior(input_ids).logits, former(input_ids).logits, rtol=0, atol=1e-5)


def test_figures_follow_eval_steps_while_the_small_data_rule_evaluates_more_often():
    from vqvae_transformer.training.train_prior import figure_due

    due = [s for s in [*range(100, 1300, 100), 1300] if figure_due(s, 100, 700, 1300)]
    assert due == [700, 1300]  # the small-data rule: evaluations every 100 steps, figures every 700 and at the end
    assert [s for s in (700, 1300) if figure_due(s, 700, 700, 1300)] == [700, 1300]  # the preset: every evaluation
    assert [s for s in (150, 300, 450, 600) if figure_due(s, 150, 400, 600)] == [450, 600]  # first eval past 400


def test_evaluations_between_figures_measure_the_validation_loss_only(tmp_path, monkeypatch):
    from tests.test_pipeline import tiny_pipeline
    from vqvae_transformer.models.reconstruction import encode_tokens
    from vqvae_transformer.training import train_prior

    pipe = tiny_pipeline(channels=1)
    drawn = []
    monkeypatch.setattr(train_prior, "save_labelled_grid", lambda *a, **k: drawn.append(k.get("title")))
    monkeypatch.setattr(train_prior, "save_curves", lambda *a, **k: None)
    val_tokens, val_labels = encode_tokens(pipe.vqvae, torch.rand(3, 1, 16, 16) * 2 - 1), torch.tensor([0, 1, 2])
    evaluate = train_prior.make_prior_eval(pipe.vqvae, val_tokens, val_labels, pipe.user_ids, tmp_path,
                                           batch_size=4, seed=3, resolution=16, figure_cadence=(2, 4, 6))
    metrics = {step: evaluate(pipe.prior, step, []) for step in (2, 4, 6)}
    assert drawn == ["prior samples at step 4", "prior samples at step 6"]
    assert set(metrics[2]) == {"loss", "perplexity"}  # no grid, no second pass for the user-token gain
    assert set(metrics[4]) == set(metrics[6]) == {"loss", "perplexity", "user_token_gain"}
    assert metrics[2]["loss"] == metrics[4]["loss"] == train_prior.validation_loss(pipe.prior, val_tokens,
                                                                                   val_labels, 4)


def test_training_sample_grid_is_drawn_through_the_pipeline_with_its_defaults(tmp_path, monkeypatch):
    """The prior's evaluation grid shows what generate_main would write: the pipeline's images for the same
    generator seed and shipped sampling settings, coloured back for false-colour data."""
    from tests.test_pipeline import tiny_pipeline
    from vqvae_transformer.models.pipeline import VQVAETransformerPipeline
    from vqvae_transformer.models.reconstruction import encode_tokens
    from vqvae_transformer.training import train_prior

    gray = tiny_pipeline(channels=1)
    shown = []
    monkeypatch.setattr(train_prior, "save_labelled_grid", lambda images, labels, *a, **k: shown.append(
        (images, labels)))
    monkeypatch.setattr(train_prior, "save_curves", lambda *a, **k: None)
    val = torch.rand(3, 1, 16, 16) * 2 - 1
    evaluate = train_prior.make_prior_eval(gray.vqvae, encode_tokens(gray.vqvae, val), torch.tensor([0, 1, 2]),
                                           gray.user_ids, tmp_path, batch_size=4, seed=3, resolution=16,
                                           colormap="jet")
    metrics = evaluate(gray.prior, 10, [])
    assert set(metrics) == {"loss", "perplexity", "user_token_gain"}
    images, labels = shown[0]
    assert labels == [f"ID_{u}" for u in gray.user_ids]
    jet = VQVAETransformerPipeline(vqvae=gray.vqvae, prior=gray.prior, user_ids=gray.user_ids, colormap="jet")
    expected = jet(user_ids=gray.user_ids, num_images_per_user=train_prior.SAMPLES_PER_USER, output_type="pt",
                   generator=torch.Generator().manual_seed(3)).images  # shipped guidance and temperature
    assert images.shape == (3 * train_prior.SAMPLES_PER_USER, 3, 16, 16)  # coloured back: RGB
    assert torch.equal(images, expected)


def test_curves_drawn_at_an_evaluation_include_its_own_point(tmp_path):
    """The loop records an evaluation only once ``eval_fn`` returns; the curves drawn inside it must still show it
    (they showed one validation point fewer: a 1300-step prior evaluated at 700 and 1300 drew only 700)."""
    from vqvae_transformer.training.loop import LoopConfig, run_training, with_evaluation

    drawn = []

    def eval_fn(model, step, history):
        metrics = {"loss": 10.0 - step}
        drawn.append([(row["step"], row.get("val_loss")) for row in with_evaluation(history, metrics)])
        return metrics

    def step_fn(model, batch, accelerator):
        x, y = batch
        return torch.nn.functional.mse_loss(model(x), y), {}

    cfg = LoopConfig(output_dir=tmp_path, checkpoint_dir=tmp_path / "ckpt", max_train_steps=5, batch_size=2,
                     learning_rate=1e-2, eval_steps=2, checkpointing_steps=100, lr_warmup_steps=1)
    data = torch.utils.data.TensorDataset(torch.randn(8, 3), torch.randn(8, 1))
    _, history, _ = run_training(cfg, torch.nn.Linear(3, 1), data, step_fn, eval_fn)
    assert drawn == [[(2, 8.0)], [(2, 8.0), (4, 6.0)], [(2, 8.0), (4, 6.0), (5, 5.0)]]  # the last step too
    assert [(row["step"], row["val_loss"]) for row in history] == drawn[-1]  # what the loop then records


def test_prior_and_tokenizer_evaluations_draw_their_current_point(tmp_path, monkeypatch):
    from tests.test_pipeline import tiny_pipeline
    from vqvae_transformer.models.reconstruction import encode_tokens
    from vqvae_transformer.training import train_prior, train_vqvae

    pipe = tiny_pipeline(channels=1)
    curves = {}
    for module in (train_prior, train_vqvae):
        monkeypatch.setattr(module, "save_curves", lambda history, keys, path: curves.update({path.name: history}))
    monkeypatch.setattr(train_prior, "save_labelled_grid", lambda *a, **k: None)
    val = torch.rand(3, 1, 16, 16) * 2 - 1
    evaluate = train_prior.make_prior_eval(pipe.vqvae, encode_tokens(pipe.vqvae, val), torch.tensor([0, 1, 2]),
                                           pipe.user_ids, tmp_path, batch_size=4, seed=3, resolution=16)
    earlier = {"step": 2, "loss": 5.0, "val_loss": 4.5}
    metrics = evaluate(pipe.prior, 4, [earlier, {"step": 4, "loss": 4.0}])
    assert curves["prior_curves.png"] == [earlier, {"step": 4, "loss": 4.0, "val_loss": metrics["loss"],
                                                    "val_perplexity": metrics["perplexity"],
                                                    "val_user_token_gain": metrics["user_token_gain"]}]
    evaluate = train_vqvae.make_vqvae_eval(val, tmp_path, batch_size=4)
    metrics = evaluate(pipe.vqvae, 4, [{"step": 4, "loss": 0.3}])
    assert curves["vqvae_curves.png"][-1]["val_psnr"] == metrics["psnr"]
    assert curves["vqvae_curves.png"][-1]["val_codebook_usage"] == metrics["codebook_usage"]
