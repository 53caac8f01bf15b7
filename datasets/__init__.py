"""Built-in dataset plugins (installed as ``hashbench.datasets``)."""
