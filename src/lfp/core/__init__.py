"""Core: params, paths, I/O, errors, tracking, secrets and the stage opener."""
