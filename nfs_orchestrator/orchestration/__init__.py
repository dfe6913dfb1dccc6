"""The only code that imports ray, optuna and mlflow, cut by the process it runs in (see the
README's Layout)."""
