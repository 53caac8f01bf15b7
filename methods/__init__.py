"""Built-in method plugins (installed as ``hashbench.methods``)."""
