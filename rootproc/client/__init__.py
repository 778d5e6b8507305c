"""rootproc.client.scoring_client."""
