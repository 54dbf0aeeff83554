"""The classic gradient compressors, as codecs of the framework.

Sparsifiers ``topk``, ``randk``, ``threshold`` (:mod:`.topk`); error feedback around
any lossy codec, ``ef:<codec>`` (:mod:`.ef`); quantizers ``qsgd``, ``terngrad``
(:mod:`.quant`); ``signsgd``, ``efsignsgd`` and the server's ``majority_vote``
(:mod:`.sign`); ``dgc`` (:mod:`.dgc`); ``stc`` and its stateless step ``ternary``
(:mod:`.stc`); ``powersgd`` (:mod:`.powersgd`) and its two-phase exchange
(:mod:`.powersgd_exchange`); the index coding sparse payloads share
(:mod:`.indices`) and the common base (:mod:`.base`). Each module cites its paper.
"""
