"""Downstream ranking models that consume DERM embeddings (paper section 3.2, appendix D).

training_set/     logs + Feast get_historical_features -> point-in-time-correct Parquet
                  (or Arrow IPC); its __init__ maps its modules, names.py to build.py
data.py           training set -> tensors (LightningDataModule)
models.py         CTR (MoE of low-rank DCNv2 experts) and CVR (DHEN) networks
system.py         the thin LightningModule: losses, optimiser, eval metrics
experiments.py    the paper's offline tables 1, 2 and 4, end to end on a generated log
cli.py            `derm downstream` and `derm experiment`
"""
