"""What wakes the claim loop: LISTEN, the sweep. They only say "look again"; the claim
query decides what to do."""
