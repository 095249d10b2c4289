"""What a measurement needs besides the timing loop: machine facts, fresh measuring processes,
per-node profiles (ONNX Runtime, torch) and page-fault counts. Nothing here estimates."""
