"""Training-step parity with transformers: gradients of the token cross-entropy, parameter by parameter.

The forward parity tests check logits; these check the backward too, which issue 18 rewrote for speed
(custom-VJP bias add in the MLM head, custom-VJP gated activation in the Llama MLP, erf-form GELU,
logsumexp-form token log-probs). Tiny random transformers models, saved locally and loaded through
``load_hf_checkpoint``; torch computes ``cross_entropy`` and ``backward()``; the diffjax gradients are
mapped back to HF names with the family's ``params_to_hf``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.checkpoints import hf as hf_lib
from diffjax.diffusion.masked import token_log_probs

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def _models(kind):
    torch.manual_seed(0)
    if kind == "roberta":
        cfg = transformers.RobertaConfig(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                         intermediate_size=64, max_position_embeddings=40, type_vocab_size=1,
                                         pad_token_id=1, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        return transformers.RobertaForMaskedLM(cfg), dict(mlm_head=True)
    cfg = transformers.LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                                   max_position_embeddings=64)
    return transformers.LlamaForCausalLM(cfg), {}


@pytest.mark.parametrize("kind", ["roberta", "llama"])
def test_cross_entropy_gradients_match_transformers(kind, tmp_path):
    tm, overrides = _models(kind)
    for p in tm.parameters():  # non-zero biases so their gradients are tested through non-trivial paths
        with torch.no_grad():
            p.add_(0.02 * torch.randn_like(p))
    tm.save_pretrained(str(tmp_path))
    model, params = hf_lib.load_hf_checkpoint(str(tmp_path), **overrides)
    rs = np.random.RandomState(0)
    ids = rs.randint(3, 97, (2, 12))
    labels = rs.randint(0, 97, (2, 12))

    tm.train(False)
    loss_t = torch.nn.functional.cross_entropy(tm(torch.tensor(ids)).logits.reshape(-1, 97), torch.tensor(labels).reshape(-1))
    loss_t.backward()
    grads_t = {n: p.grad.numpy() for n, p in tm.named_parameters() if p.grad is not None}

    def loss_fn(p):
        out = model.apply({"params": p}, jnp.asarray(ids))
        logits = out["logits"] if isinstance(out, dict) else out
        return -jnp.mean(token_log_probs(logits, jnp.asarray(labels)))

    loss_j, grads_j = jax.jit(jax.value_and_grad(loss_fn))(params)
    np.testing.assert_allclose(float(loss_j), float(loss_t.detach()), rtol=1e-5)
    family = hf_lib._family_of_model(model)
    grads_hf = {k: np.asarray(v) for k, v in family.params_to_hf(grads_j, model).items()}
    compared = 0
    for name, g in grads_hf.items():
        if name not in grads_t:
            continue
        gt = grads_t[name]
        assert g.shape == gt.shape, name
        np.testing.assert_allclose(g, gt, rtol=2e-4, atol=2e-6, err_msg=name)
        compared += 1
    assert compared >= len(grads_t) - 1, (sorted(grads_t), sorted(grads_hf))  # all but a tied duplicate name
