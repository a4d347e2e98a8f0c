"""Scale-out on Ray Serve: replicas of the model, and requests of one conversation routed to the same replica."""
