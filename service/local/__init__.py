"""Local stand-ins: never imported by a production worker."""
