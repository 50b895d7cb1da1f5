"""Pipeline stages. Each is a plain function `run(cfg, root) -> summary` over files under a run root;
the Modal app only decides where a stage runs."""
