"""Video providers behind one port (``base.VideoProvider``)."""
