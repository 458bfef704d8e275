"""Daily materialization of DERM embeddings (paper appendix C): one pure kernel
(`kernel`), two engines (`engine_local`, `engine_spark`), the files (`storage`), the
health metrics (`health`), one day's job (`job`) and `derm materialize` (`cli`)."""
