"""What upstream and downstream share: the network config, feature tokens and batch encoding."""
