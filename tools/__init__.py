"""Scripts that run the project on a lent GPU machine (one call each) and package what it needs there."""
