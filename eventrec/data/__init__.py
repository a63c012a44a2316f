"""From a built store to model inputs: jagged tensors, EBF batches, history windows, the DataLoader,
new requests encoded against a store, and the DLRM baseline's aggregated features."""
