"""One module per experiment; importing this package registers them all."""
