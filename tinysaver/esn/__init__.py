"""Exit Sequence Network (ESN, paper §3.4, §6.3, §6.4): exits on the base's backbone that also see
the saver.

The saver and the base are pre-trained and frozen. The base is cut into segments (its stages); after
some of them an *exit* answers. Each exit reads a sequence of tokens: token 0 embeds the saver's
pre-logits features, token ``n`` the globally pooled output of the ``n``-th tapped segment. ``L``
layers of multi-head self-attention with a causal mask (token ``n`` sees tokens ``0..n`` only, so
inference can stop at any exit) mix them, and one linear head per exit predicts a correction
``Δy_n`` of the saver's logits: exit ``n`` answers ``y_S + Δy_n``. The heads start at zero, so an
untrained ESN *is* the saver at every exit, and training starts from the saver's accuracy.

Live, the ESN is a cascade on the one routing routine (:func:`tinysaver.routing.route`): stage 0 is
the saver on the whole batch; stage ``n`` runs the base's next segment(s) on the samples still open
(their feature maps are carried from the previous stage), appends their token and answers the
confident ones; the last stage is the rest of the base and its own head. So an ESN's records are
one record per stage (saver, each exit, the base's final output) whose ``gmacs`` are the stage's
*incremental* cost, and the routing equals the simulation on those records sample by sample.

Loss (eq. 11): each exit's cross-entropy weighted per sample by ``2 (1 − max softmax(y_S))``: the
samples the saver is sure about mostly exit at the saver and never reach an exit, so they weigh little.

Examples:
    >>> esn = ExitSequenceNetwork(saver, base, input_size=(1, 28, 28), dim=32, layers=1)  # doctest: +SKIP
    >>> feats = esn.features(images)                       # frozen models, pooled features
    >>> logits = esn.sequence(feats.saver_logits, feats.saver_feat, feats.exit_feats)  # [B, exits, C]
    >>> loss = esn_loss(logits, labels, feats.saver_logits)                 # eq. (11)
    >>> esn.thresholds = [0.9, 0.8, 0.8]                   # saver, exit 1, exit 2 (+inf: never)
    >>> out = esn(images)                                  # progressive: out.logits, out.stage

Modules: :mod:`.segments` (the base cut into segments), :mod:`.sequence` (the trainable exit
sequence and eq. (11)), :mod:`.network` (the live :class:`ExitSequenceNetwork`), :mod:`.training`
(cached features, training, checkpoints), :mod:`.evaluation` (stage records, live vs simulation,
speed), :mod:`.search` (threshold search over the exits).

May import: the core modules (errors/io/registry/thresholds/confidence/records/routing),
:mod:`tinysaver.models`, :mod:`tinysaver.analysis`, torch.
"""
from __future__ import annotations

from .network import ESNFeatures, ExitSequenceNetwork, esn_config, exit_records_arrays
from .segments import BaseSegments, global_pool, split_base
from .sequence import LOSSES, CausalBlock, ExitSequence, esn_loss, saver_weights

__all__ = ["ExitSequenceNetwork", "ExitSequence", "CausalBlock", "BaseSegments", "ESNFeatures", "split_base",
           "global_pool", "esn_loss", "saver_weights", "esn_config", "exit_records_arrays", "LOSSES"]
