"""What every generating route shares: engine requests from protocol models, delivery, usage, errors."""
