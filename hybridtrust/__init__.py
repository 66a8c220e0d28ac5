"""hybridtrust: the hybrid OAuth trust between on-premises servers and Microsoft 365, as pytest tests."""

__version__ = "0.1.0"
