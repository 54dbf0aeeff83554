"""The classic gradient compressors, as codecs of the framework.

Sparsifiers ``topk``, ``randk``, ``threshold`` (:mod:`.topk`); error feedback around
any lossy codec, ``ef:<codec>`` (:mod:`.ef`); quantizers ``qsgd``, ``terngrad``
(:mod:`.quant`); ``signsgd`` and ``efsignsgd``
(:mod:`.sign`); ``dgc`` (:mod:`.dgc`); ``stc`` and its stateless step ``ternary``
(:mod:`.stc`); ``powersgd`` (:mod:`.powersgd`; its two-phase exchange is
:mod:`fedpress.exchange.powersgd`); HGC's equal-count quantizer and predictor
(:mod:`.equalcount`), its value coders (:mod:`.hgc_values`) and single-stream codec
(:mod:`.hgc`); the index coding sparse payloads share
(:mod:`.indices`) and the common base (:mod:`.base`). Each module cites its paper.
"""
