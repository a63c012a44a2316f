"""Models: the event-sequence ranker and the DLRM baseline, sharing embedding tables and task heads."""
