"""Object storage behind one port (``base.ObjectStore``)."""
