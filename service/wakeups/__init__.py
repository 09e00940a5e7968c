"""What wakes the claim loop: LISTEN, Supabase Realtime, the sweep. They only say "look
again"; the claim query decides what to do."""
