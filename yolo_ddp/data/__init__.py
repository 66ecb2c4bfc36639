"""Dataset spec parsing, a node-shared label index, and the torch DataLoader backend."""
