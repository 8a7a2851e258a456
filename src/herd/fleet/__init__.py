"""herd's fleet: N local replicas behind one gateway, restarted, rolled and drained.

`herd.fleet.serve.run_fleet` is what `herd serve` runs."""
