"""Defense: levels and their policy, and (as they land) telemetry, the detector, probe and prompt screening."""
