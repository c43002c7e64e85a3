"""Dataset loaders: each reads real data from a data directory and fails with a one-line UserError."""
