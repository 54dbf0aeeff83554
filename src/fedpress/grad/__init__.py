"""The classic gradient compressors, as codecs of the framework.

Sparsifiers (``topk``, ``randk``, ``threshold``; :mod:`.topk`), error feedback
around any lossy codec (``ef:<codec>``; :mod:`.ef`), and the index coding their
payloads share (:mod:`.indices`). Each module cites its paper.
"""
