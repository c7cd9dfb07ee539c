"""The corral command line (typer): serve, run, pull, push, list, ps, show, rm, cp, create, stop, backends."""
