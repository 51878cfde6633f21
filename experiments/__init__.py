"""Research scripts: ``python -m experiments.<name>`` (outputs in experiments/out/)."""
