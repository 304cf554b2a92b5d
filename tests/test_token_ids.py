"""Issue 17 item 3: token ids outside [0, vocab) or of a float dtype are refused at the models'
entry points with the offending value and position (no NaN logits, no other token's output)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import checkify

from diffjax.models import bert, llama, t5
from diffjax.models.inputs import TokenIdError, check_token_ids, checkify_token_ids


def small_models():
    b = bert.BertEncoder(bert.BertConfig(vocab_size=32, hidden_size=16, num_layers=1, num_heads=2,
                                         intermediate_size=16, max_position_embeddings=16))
    lcfg = llama.LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                             num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32)
    tcfg = t5.T5Config(vocab_size=40, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=2, dropout_rate=0.0)
    return b, llama.Llama(lcfg), t5.T5(tcfg)


def test_every_entry_point_refuses_bad_ids_with_value_and_position():
    b, l, t = small_models()
    ids = jnp.asarray([[1, 2, 3], [4, 5, 6]], jnp.int32)
    pb = b.init(jax.random.key(0), ids)
    pl = l.init(jax.random.key(0), ids)
    pt = t.init(jax.random.key(0), ids, ids)
    bad = np.asarray([[1, 2, 3], [4, 99, 6]], np.int32)
    with pytest.raises(TokenIdError, match=r"token id 99 at position \(1, 1\) is outside the vocabulary \[0, 32\)"):
        b.apply(pb, bad)
    with pytest.raises(TokenIdError, match=r"token id 99 at position \(1, 1\) is outside the vocabulary \[0, 50\)"):
        l.apply(pl, bad)
    with pytest.raises(TokenIdError, match=r"\[0, 40\)"):
        t.apply(pt, bad, ids)
    with pytest.raises(TokenIdError, match="decoder_input_ids"):
        t.apply(pt, ids, bad)
    with pytest.raises(TokenIdError, match=r"token id -1 at position \(0, 0\)"):
        llama.generate(l, pl, np.asarray([[-1, 2]], np.int32), max_new_tokens=2)
    with pytest.raises(TokenIdError, match="must be integers; got dtype float32"):
        b.apply(pb, ids.astype(jnp.float32))
    with pytest.raises(TokenIdError, match="must be integers"):  # dtype is checked under jit too
        jax.jit(lambda p, x: l.apply(p, x))(pl, ids.astype(jnp.float32))
    # valid ids are unaffected, eagerly and under jit
    for got, want in zip(jax.tree_util.tree_leaves(jax.jit(b.apply)(pb, ids)), jax.tree_util.tree_leaves(b.apply(pb, ids))):
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_checkify_form_inside_jit():
    f = checkify.checkify(jax.jit(lambda x: (checkify_token_ids(x, 10), x + 1)[1]))
    err, _ = f(jnp.asarray([1, 2, 3]))
    err.throw()  # no error
    err, _ = f(jnp.asarray([1, 12, 3]))
    with pytest.raises(checkify.JaxRuntimeError, match=r"token ids outside \[0, 10\)"):
        err.throw()
    check_token_ids(np.arange(10)[None], 10)


def test_unbatched_ids_name_the_expected_shape():
    """Issue 24 item 13: 1-D (or 3-D) ids gave 'not enough values to unpack' / 'Too many indices'."""
    b, l, t = small_models()
    ids = jnp.asarray([[1, 2, 3]], jnp.int32)
    pb, pl, pt = b.init(jax.random.key(0), ids), l.init(jax.random.key(0), ids), t.init(jax.random.key(0), ids, ids)
    one = np.asarray([1, 2, 3], np.int32)
    msg = r"input_ids: expected \[batch, length\] ids, got shape \(3,\) \(one sequence: add a batch axis"
    with pytest.raises(TokenIdError, match=msg):
        b.apply(pb, one)
    with pytest.raises(TokenIdError, match=msg):
        l.apply(pl, one)
    with pytest.raises(TokenIdError, match=msg):
        llama.generate(l, pl, one, max_new_tokens=2)
    with pytest.raises(TokenIdError, match=msg):
        t.apply(pt, one, ids)
    with pytest.raises(TokenIdError, match=r"decoder_input_ids: expected \[batch, length\] ids, got shape \(3,\)"):
        t.apply(pt, ids, one)
    with pytest.raises(TokenIdError, match=r"got shape \(1, 1, 3\)"):
        b.apply(pb, one[None, None])
    with pytest.raises(TokenIdError, match=r"got shape \(3,\)"):  # under jit too (shapes are static)
        jax.jit(lambda p, x: l.apply(p, x))(pl, jnp.asarray(one))
