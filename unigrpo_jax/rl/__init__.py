"""UniGRPO objective: advantages, policy-gradient terms, regularisers, replay."""
