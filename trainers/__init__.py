"""Model training: the upstream DERM model (`trainers.upstream`) and reusable modules."""
