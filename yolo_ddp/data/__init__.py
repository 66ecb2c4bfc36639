"""From a data.yaml or an export to batches: spec parsing, the node-shared label index, and both loaders."""
