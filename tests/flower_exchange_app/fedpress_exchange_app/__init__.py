"""A Flower app running fedpress's round protocols (test code only)."""
