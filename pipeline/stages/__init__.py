"""One module per DVC stage, named as the stage in dvc.yaml; each declares the params it reads
(`PARAMS`) and a `main(params, device)`. Nothing imports a stage: the CLI reaches them by name."""
