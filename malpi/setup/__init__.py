"""``malpi setup``: bring up a car's motors and camera and write its configuration (robot side)."""
