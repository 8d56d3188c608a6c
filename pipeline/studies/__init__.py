"""Studies across experiments: tables and figures generated from `dvc exp show`
(`python -m pipeline.studies.ablations`, `python -m pipeline.studies.bpe_study`)."""
