"""signatures.configstore.zookeeper."""
