"""The people-centric event store: raw logs → encoded, per-user event streams and point-in-time examples.

``raw_logs`` reads Parquet/CSV, ``vocab`` learns the encodings from the training period, ``encoding``
applies them to raw records, ``build`` writes the store, ``reader`` opens it (:class:`EventStore`),
``point_in_time`` finds each impression's cut, ``inspect`` summarises a built store.
"""
