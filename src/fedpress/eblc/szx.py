"""placeholder: replaced by the SZx implementation."""
