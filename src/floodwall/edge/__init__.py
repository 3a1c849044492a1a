"""The edge: what floodwall decides about a request before routing or any database."""
