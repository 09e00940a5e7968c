"""Local stand-ins for remote services, faithful to their real HTTP APIs."""
