"""User commands: ``demo``, ``label_bag`` (offline labeling of bags), ``check_parity``."""
