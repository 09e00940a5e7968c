"""Wake-up sources. They only say "look again"; the claim query decides what to do."""
