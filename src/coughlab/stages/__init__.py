"""One module per dvc.yaml stage; they meet only through the files dvc.yaml declares."""
