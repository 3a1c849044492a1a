"""What floodwall counts about its own traffic, for the operator and the detector."""
